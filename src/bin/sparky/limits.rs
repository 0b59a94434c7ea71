//! The open-file limit: each connection holds a descriptor, so the soft limit is raised to the
//! hard one at start, and `--max-connections` is weighed against what is left.

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use sparky::common::config::{
    Config, DESCRIPTORS_PER_CONNECTION, RESERVED_DESCRIPTORS, connections_for,
};

/// The hard open-file limit (`u64::MAX` for none, or when it cannot be read): what the soft
/// one can be raised to.
pub fn hard_open_file_limit() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).map_or(u64::MAX, |(_, hard)| hard)
}

/// Raises the soft open-file limit to the hard one. When even that is too low for
/// `--max-connections`: a value the operator gave (`explicit`) gets one warning that says what
/// to do; the default is lowered to what fits.
pub fn raise_open_file_limit(config: &mut Config, explicit: bool) {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            log::warn!("server: cannot read the open-file limit: {e}");
            return;
        }
    };
    if soft != hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        log::warn!("server: cannot raise the open-file limit: {e}");
    }
    // RLIM_INFINITY is u64::MAX.
    let available = getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |(soft, _)| soft);
    let per = DESCRIPTORS_PER_CONNECTION;
    let fits = connections_for(available);
    if config.max_connections <= fits {
        return;
    }
    if explicit {
        log::warn!(
            "server: --max-connections {} needs about {} open files ({per} per connection), but \
             the limit is {available}; past {fits} connections new ones wait. Raise the limit \
             (ulimit -n, or LimitNOFILE= under systemd) or lower --max-connections",
            config.max_connections,
            config.max_connections as u64 * per + RESERVED_DESCRIPTORS,
        );
    } else {
        log::info!(
            "server: at most {fits} connections, as the open-file limit of {available} allows"
        );
        config.max_connections = fits;
    }
}
