//! `kiln-pve-sim`: run the Proxmox VE API simulator by hand.
//!
//! `kiln-pve-sim [--config sim.toml] [--listen 127.0.0.1:8006] [--tls
//! [--certificate-out FILE]]` prints the API URL and the `Authorization`
//! header (and with `--tls` the certificate's fingerprint), one `key: value`
//! line each, then serves until interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use kiln::proxmox::sim::{SimConfig, Simulator};

/// A Proxmox VE API simulator for trying kiln without a Proxmox node.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML with `listen`, `nodes`, `[[storages]]` (id, type, content) and
    /// `[[tokens]]` (id, secret, optional `privileges`); missing keys take
    /// the defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (overrides the file); port 0 picks one.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Serve HTTPS with a self-signed certificate made at start (as if
    /// `tls = true` were in the file).
    #[arg(long)]
    tls: bool,
    /// With --tls: write the certificate (PEM) here, for a client to
    /// trust as its CA file.
    #[arg(long, requires = "tls")]
    certificate_out: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            SimConfig::from_toml(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => SimConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    config.tls |= args.tls;
    let simulator = Simulator::start(config).await?;
    if let (Some(path), Some(pem)) = (&args.certificate_out, simulator.certificate_pem()) {
        std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
    }
    #[expect(clippy::print_stdout, reason = "the binary's output")]
    {
        println!("url: {}", simulator.url());
        println!("authorization: {}", simulator.authorization());
        if let Some(fingerprint) = simulator.fingerprint() {
            println!("fingerprint: {fingerprint}");
        }
    }
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
