//! The model backend the flags ask for, and the `model-probe` thread that tells the operator
//! whether the model server is there.

use std::sync::Arc;
use std::time::Duration;

use sparky::common::config::{Config, ModelKind};
use sparky::model::ModelBackend;
use sparky::model::offline::OfflineModel;
use sparky::model::openai::{AUTO_MODELS, RemoteModel, RemoteOptions};

use crate::start_error::StartError;

/// How often the model server is asked whether it is there.
const PROBE_INTERVAL: Duration = Duration::from_secs(300);

/// The model backend `config` asks for. The API key is read from its environment variable
/// here, once, and never logged.
pub fn build(config: &Config) -> Result<Arc<dyn ModelBackend>, StartError> {
    if config.model == ModelKind::Offline {
        return Ok(Arc::new(OfflineModel));
    }
    let mut names = config
        .model_names
        .iter()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty());
    let name = names.next().ok_or_else(|| {
        StartError::Setting("--model openai needs --model-name (e.g. llama3.1, or auto)".into())
    })?;
    let mut options = RemoteOptions::new(config.model_url.clone(), name);
    options.other_models = names.collect();
    if options.model == AUTO_MODELS && !options.other_models.is_empty() {
        return Err(StartError::Setting(
            "--model-name auto lists the server's models; give no other name".into(),
        ));
    }
    options.connect_timeout = config.model_connect_timeout;
    options.read_timeout = config.model_read_timeout;
    options.vision = config.model_vision;
    if let Some(var) = &config.api_key_env {
        match std::env::var(var) {
            Ok(key) if !key.trim().is_empty() => options.api_key = Some(key.trim().to_owned()),
            _ => {
                return Err(StartError::Setting(format!(
                    "--api-key-env {var}: the variable is not set"
                )));
            }
        }
    }
    let model = RemoteModel::new(options);
    log::info!(
        "model: {} at {}{}",
        model.name(),
        model.endpoint(),
        if config.api_key_env.is_some() {
            " (with an API key)"
        } else {
            ""
        }
    );
    Ok(Arc::new(model))
}

/// Starts the detached `model-probe` thread: it asks the model server at start, then every
/// [`PROBE_INTERVAL`], and says so when it cannot be reached or does not serve the model, and
/// when it answers again. `/healthz` shows the last answer (turns update it too). It ends when
/// the model has nothing to probe (the offline one).
pub fn watch(model: Arc<dyn ModelBackend>) {
    let watcher = std::thread::Builder::new()
        .name("model-probe".into())
        .spawn(move || {
            let mut answered = None;
            loop {
                let Some(outcome) = model.probe() else {
                    return;
                };
                match (&outcome, answered) {
                    (Err(e), None | Some(true)) => {
                        log::warn!("model: {e}; turns will fail until it answers");
                    }
                    (Ok(()), Some(false)) => log::info!("model: the model server answers again"),
                    (Ok(()), None) => {
                        log::info!("model: the model server serves {}", model.name());
                    }
                    _ => {}
                }
                answered = Some(outcome.is_ok());
                // A timer, not a wait for something.
                std::thread::sleep(PROBE_INTERVAL);
            }
        });
    if let Err(e) = watcher {
        log::warn!("model: cannot start the model probe: {e}");
    }
}
