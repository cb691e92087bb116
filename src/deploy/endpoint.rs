//! The Proxmox endpoint a host deploys through, from its `proxmox.api`
//! options. The token's secret comes from the environment variable or file
//! the options name, never from the repo or the command line.

use std::path::Path;
use std::time::Duration;

use crate::eval::spec::Api;
use crate::proxmox::client::{ApiError, Endpoint, Token, Trust};

pub const DEFAULT_TOKEN: &str = "kiln@pve!deploy";
pub const DEFAULT_SECRET_ENV: &str = "KILN_PROXMOX_SECRET";
pub const DEFAULT_TIMEOUT: u32 = 60;
pub const DEFAULT_TASK_TIMEOUT: u32 = 1800;

/// The endpoint for `host`, reading the secret through `env`.
pub fn endpoint(
    host: &str,
    api: &Api,
    repo: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Endpoint, ApiError> {
    let url = api.url.clone().ok_or_else(|| {
        ApiError::Config(format!(
            "host `{host}` sets no `proxmox.api.url`: kiln does not know which Proxmox to deploy to\n  hint: set it once for every host in a module, e.g. `proxmox.api.url = \"https://pve1.home.arpa:8006\"`"
        ))
    })?;
    let id = api.token.as_deref().unwrap_or(DEFAULT_TOKEN);
    let variable = api.secret_env.as_deref().unwrap_or(DEFAULT_SECRET_ENV);
    let token = match (
        env(variable).filter(|v| !v.trim().is_empty()),
        &api.secret_file,
    ) {
        (Some(secret), _) => Token::new(id, &secret)?,
        (None, Some(file)) => Token::from_file(id, &repo.join(file))?,
        (None, None) => {
            return Err(ApiError::Config(format!(
                "host `{host}`: the secret of API token `{id}` is read from the environment variable {variable}, which is not set\n  hint: `read -rs {variable} && export {variable}`, or set `proxmox.api.secret_file`"
            )));
        }
    };
    let trust = match (&api.fingerprint, &api.ca_file) {
        (Some(_), Some(_)) => {
            return Err(ApiError::Config(format!(
                "host `{host}`: set `proxmox.api.fingerprint` or `proxmox.api.ca_file`, not both"
            )));
        }
        (Some(fingerprint), None) => Trust::fingerprint(fingerprint.trim_start_matches("sha256/"))?,
        (None, Some(file)) => Trust::CaFile(repo.join(file)),
        (None, None) => Trust::System,
    };
    Ok(Endpoint {
        url,
        token,
        trust,
        timeout: Duration::from_secs(u64::from(api.timeout.unwrap_or(DEFAULT_TIMEOUT))),
    })
}

/// How long a task may run.
pub fn task_timeout(api: &Api) -> Duration {
    Duration::from_secs(u64::from(api.task_timeout.unwrap_or(DEFAULT_TASK_TIMEOUT)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_from_env_or_file_never_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let api = Api {
            url: Some("https://pve1:8006".into()),
            ..Api::default()
        };
        let none = |_: &str| None;
        let error = endpoint("db", &api, dir.path(), &none)
            .unwrap_err()
            .to_string();
        assert!(error.contains("KILN_PROXMOX_SECRET"), "{error}");
        let env = |v: &str| (v == "KILN_PROXMOX_SECRET").then(|| "s3cr3t-value".to_owned());
        let ok = endpoint("db", &api, dir.path(), &env).unwrap();
        assert!(!format!("{ok:?}").contains("s3cr3t"));
        std::fs::write(dir.path().join("secret"), "from-file-secret\n").unwrap();
        let api = Api {
            secret_file: Some("secret".into()),
            ..api
        };
        let ok = endpoint("db", &api, dir.path(), &none).unwrap();
        assert_eq!(ok.token.id(), DEFAULT_TOKEN);
        let unset = endpoint("db", &Api::default(), dir.path(), &env)
            .unwrap_err()
            .to_string();
        assert!(unset.contains("proxmox.api.url"), "{unset}");
    }
}
