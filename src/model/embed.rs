//! Embeddings: the [`Embed`] trait that semantic memory uses, [`RemoteEmbedder`] (an
//! OpenAI-compatible `POST {base_url}/embeddings`: Ollama, llama.cpp's server with
//! `--embedding`, vLLM, OpenAI), and [`HashEmbedder`], a deterministic embedder for tests and
//! benchmarks. Every vector an [`Embed`] returns has unit length, so that cosine similarity is
//! a dot product.
//!
//! Depends on: `common::config`, `model::error`.

use std::fmt;
use std::time::Duration;

use serde_json::{Value, json};
use ureq::Agent;

use crate::common::config::Config;
use crate::model::error::ModelError;

/// The largest embeddings answer read.
const MAX_ANSWER_BYTES: u64 = 64 << 20;

/// The most dimensions a vector may have (OpenAI's largest model has 3,072).
pub const MAX_DIMENSIONS: usize = 8_192;

/// Turns texts into vectors.
pub trait Embed: Send + Sync {
    /// The embedding model's name: stored beside each vector, so that vectors of another
    /// model are never compared with its own.
    fn model(&self) -> &str;

    /// One unit-length vector per text, in order, all of one dimension.
    ///
    /// # Errors
    ///
    /// A [`ModelError`] when the server failed or answered something that is not one finite
    /// vector per text.
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError>;
}

/// Where a [`RemoteEmbedder`] reaches its server.
#[derive(Clone)]
pub struct EmbedOptions {
    /// The API's base URL, up to and including `/v1`.
    pub base_url: String,
    /// The embedding model, e.g. `nomic-embed-text`.
    pub model: String,
    /// Sent as `Authorization: Bearer …` when set. Never logged.
    pub api_key: Option<String>,
    /// How long one request may take, from connecting to the last byte of the answer.
    pub timeout: Duration,
}

impl EmbedOptions {
    /// What `config` asks for (`--embedding-model`), or `None` without an embedding model:
    /// the embedding server is `--embedding-url`, else the model's (`--model-url`), asked
    /// with the model's API key (`--api-key-env`, read now) when it is the same server.
    pub fn from_config(config: &Config) -> Option<EmbedOptions> {
        let model = config
            .embedding_model
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())?;
        let api_key = match (&config.embedding_url, &config.api_key_env) {
            (None, Some(var)) => std::env::var(var).ok().map(|key| key.trim().to_owned()),
            _ => None,
        };
        Some(EmbedOptions {
            base_url: config
                .embedding_url
                .clone()
                .unwrap_or_else(|| config.model_url.clone()),
            model: model.to_owned(),
            api_key,
            timeout: config.embedding_timeout,
        })
    }
}

impl fmt::Debug for EmbedOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbedOptions")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "(set)"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// An OpenAI-compatible embeddings endpoint.
#[derive(Debug)]
pub struct RemoteEmbedder {
    options: EmbedOptions,
    url: String,
    agent: Agent,
}

impl RemoteEmbedder {
    /// An embedder that asks the server `options` names. Nothing is sent until asked.
    pub fn new(options: EmbedOptions) -> Self {
        let url = format!("{}/embeddings", options.base_url.trim_end_matches('/'));
        let timeout = Some(options.timeout);
        let agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(timeout)
            .user_agent(concat!("sparky/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        RemoteEmbedder {
            options,
            url,
            agent,
        }
    }

    /// The URL requests go to.
    pub fn endpoint(&self) -> &str {
        &self.url
    }
}

impl Embed for RemoteEmbedder {
    fn model(&self) -> &str {
        &self.options.model
    }

    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let body = json!({"model": self.options.model, "input": texts}).to_string();
        let mut request = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json");
        if let Some(key) = &self.options.api_key {
            request = request.header("Authorization", &format!("Bearer {key}"));
        }
        let at_url = || format!("{SERVER} at {}", self.url);
        let mut response = request
            .send(body)
            .map_err(|source| ModelError::Unreachable {
                server: at_url(),
                source,
            })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_string()
            .map_err(|source| ModelError::Unreadable {
                server: SERVER.to_owned(),
                source,
            })?;
        if status != 200 {
            return Err(ModelError::Status {
                server: at_url(),
                request: None,
                status,
                detail: text.chars().take(300).collect(),
            });
        }
        let answer: Value = serde_json::from_str(&text).map_err(|source| ModelError::NotJson {
            server: SERVER.to_owned(),
            source,
        })?;
        parse_embeddings(&answer, texts.len())
    }
}

/// How the embedding server is named in errors.
const SERVER: &str = "the embedding server";

/// The vectors of an OpenAI-style answer (`data: [{index, embedding}]`), in the order of the
/// inputs, each of unit length.
fn parse_embeddings(answer: &Value, count: usize) -> Result<Vec<Vec<f32>>, ModelError> {
    let wrong = |detail: &str| ModelError::Answer(detail.to_owned());
    let items = answer["data"]
        .as_array()
        .ok_or_else(|| wrong("the embedding server's answer has no data list"))?;
    if items.len() != count {
        return Err(ModelError::Answer(format!(
            "the embedding server returned {} vectors for {count} texts",
            items.len()
        )));
    }
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; count];
    for (position, item) in items.iter().enumerate() {
        let index = item["index"]
            .as_u64()
            .and_then(|i| usize::try_from(i).ok())
            .unwrap_or(position);
        let slot = vectors.get_mut(index).ok_or_else(|| {
            ModelError::Answer(format!("the embedding server returned index {index}"))
        })?;
        let values = item["embedding"]
            .as_array()
            .ok_or_else(|| wrong("an embedding is not a list of numbers"))?;
        let vector: Vec<f32> = values
            .iter()
            .map(|v| v.as_f64().map(|v| v as f32).filter(|v| v.is_finite()))
            .collect::<Option<_>>()
            .ok_or_else(|| wrong("an embedding holds something other than finite numbers"))?;
        *slot = Some(
            normalized(vector).ok_or_else(|| wrong("an embedding is empty, zero or too long"))?,
        );
    }
    let vectors: Vec<Vec<f32>> = vectors
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(|| wrong("the embedding server skipped an input"))?;
    if vectors.windows(2).any(|w| w[0].len() != w[1].len()) {
        return Err(wrong(
            "the embedding server returned vectors of different lengths",
        ));
    }
    Ok(vectors)
}

/// `vector` scaled to unit length; `None` for an empty, zero or oversized one.
pub fn normalized(mut vector: Vec<f32>) -> Option<Vec<f32>> {
    if vector.is_empty() || vector.len() > MAX_DIMENSIONS {
        return None;
    }
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return None;
    }
    vector.iter_mut().for_each(|v| *v /= norm);
    Some(vector)
}

/// A deterministic embedder for tests and benchmarks, no model needed: each text becomes a
/// hashed bag of its words' character trigrams (with the word's edges marked, so `cat` gives
/// `^ca`, `cat`, `at$`) and of crude word stems (the first five letters), in
/// [`HashEmbedder::DIMENSIONS`] buckets. Texts that share word pieces get similar vectors, so
/// "my cats" finds "the cat", which BM25 with a different stemmer may not; synonyms it cannot
/// know. The same text always gives the same vector, on any machine.
#[derive(Clone, Debug)]
pub struct HashEmbedder {
    model: String,
}

impl HashEmbedder {
    /// Buckets of a vector.
    pub const DIMENSIONS: usize = 256;

    /// An embedder that calls itself `model`.
    pub fn new(model: impl Into<String>) -> Self {
        HashEmbedder {
            model: model.into(),
        }
    }

    /// The unit vector of `text` (a zero text, one without letters or digits, gets one
    /// bucket of its own so that it is still a unit vector).
    pub fn vector(text: &str) -> Vec<f32> {
        let mut buckets = vec![0f32; Self::DIMENSIONS];
        let mut add = |piece: &str, weight: f32| {
            // FNV-1a: stable across builds and platforms, unlike std's hasher.
            let mut hash: u32 = 0x811c_9dc5;
            for byte in piece.bytes() {
                hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
            }
            buckets[hash as usize % Self::DIMENSIONS] += weight;
        };
        for word in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            let word = word.to_lowercase();
            let chars: Vec<char> = format!("^{word}$").chars().collect();
            for trigram in chars.windows(3) {
                add(&trigram.iter().collect::<String>(), 1.0);
            }
            let stem: String = word.chars().take(5).collect();
            add(&format!("stem:{stem}"), 2.0);
        }
        normalized(buckets).unwrap_or_else(|| {
            let mut unit = vec![0f32; Self::DIMENSIONS];
            unit[0] = 1.0;
            unit
        })
    }
}

impl Embed for HashEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        Ok(texts.iter().map(|text| Self::vector(text)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn answers_are_read_in_input_order_and_normalized() {
        let answer = json!({"data": [
            {"index": 1, "embedding": [0.0, 2.0]},
            {"index": 0, "embedding": [3.0, 4.0]},
        ]});
        let vectors = parse_embeddings(&answer, 2).unwrap();
        assert_eq!(vectors, vec![vec![0.6, 0.8], vec![0.0, 1.0]]);
    }

    #[test]
    fn garbage_answers_are_errors() {
        for answer in [
            json!({}),
            json!({"data": []}),
            json!({"data": [{"embedding": "no"}]}),
            json!({"data": [{"embedding": [0.0, 0.0]}]}),
            json!({"data": [{"embedding": [1.0, null]}]}),
            json!({"data": [{"index": 7, "embedding": [1.0]}]}),
        ] {
            assert!(parse_embeddings(&answer, 1).is_err(), "{answer}");
        }
        let uneven = json!({"data": [{"embedding": [1.0]}, {"embedding": [1.0, 2.0]}]});
        assert_eq!(
            parse_embeddings(&uneven, 2).unwrap_err().to_string(),
            "the embedding server returned vectors of different lengths"
        );
    }

    #[test]
    fn the_hash_embedder_is_deterministic_and_sees_shared_word_pieces() {
        let cat = HashEmbedder::vector("Tom is a tabby cat");
        assert_eq!(cat, HashEmbedder::vector("Tom is a tabby cat"));
        assert!((dot(&cat, &cat) - 1.0).abs() < 1e-5);
        let near = dot(&cat, &HashEmbedder::vector("my cats"));
        let far = dot(&cat, &HashEmbedder::vector("quarterly revenue report"));
        assert!(near > far, "near {near}, far {far}");
        assert_eq!(HashEmbedder::vector("!!!").len(), HashEmbedder::DIMENSIONS);
    }
}
