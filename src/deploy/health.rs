//! The host's declared health check: a TCP port that accepts a
//! connection, or an HTTP URL that answers 2xx/3xx.

use std::time::{Duration, Instant};

use crate::eval::spec::Health;

/// Default seconds to wait for a guest to run and pass its check.
pub const DEFAULT_TIMEOUT: u64 = 300;

/// The deadline for a health check starting now.
pub fn deadline(health: &Health) -> Instant {
    Instant::now() + Duration::from_secs(health.timeout.map_or(DEFAULT_TIMEOUT, u64::from))
}

/// What the check is, for messages (`tcp 192.168.10.22:5432`), or `None`
/// when the host declares none.
pub fn describe(health: &Health) -> Option<String> {
    match (&health.tcp, &health.http) {
        (Some(tcp), Some(http)) => Some(format!("tcp {tcp} and http {http}")),
        (Some(tcp), None) => Some(format!("tcp {tcp}")),
        (None, Some(http)) => Some(format!("http {http}")),
        (None, None) => None,
    }
}

/// Wait until every declared check passes, or `deadline`. The error says
/// what the last attempt saw.
pub async fn wait(health: &Health, deadline: Instant) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    loop {
        let mut last = None;
        if let Some(address) = &health.tcp {
            let attempt = tokio::time::timeout(
                Duration::from_secs(3),
                tokio::net::TcpStream::connect(address),
            )
            .await;
            match attempt {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => last = Some(format!("tcp {address}: {e}")),
                Err(_) => last = Some(format!("tcp {address}: no answer within 3 s")),
            }
        }
        if last.is_none()
            && let Some(url) = &health.http
        {
            match http.get(url).send().await {
                Ok(response)
                    if response.status().is_success() || response.status().is_redirection() => {}
                Ok(response) => last = Some(format!("http {url}: answered {}", response.status())),
                Err(e) => last = Some(format!("http {url}: {}", e.without_url())),
            }
        }
        let Some(last) = last else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_passes_when_listening_and_times_out_when_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let health = Health {
            tcp: Some(address.clone()),
            ..Health::default()
        };
        wait(&health, Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();
        drop(listener);
        let error = wait(&health, Instant::now() + Duration::from_millis(1500))
            .await
            .unwrap_err();
        assert!(error.contains(&address), "{error}");
    }
}
