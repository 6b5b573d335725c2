//! `appliance`: command line of the control plane.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The key-manager appliance.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The appliance's own PKI for mutual TLS with its proxies.
    #[command(subcommand)]
    Pki(Pki),
}

#[derive(Debug, Subcommand)]
enum Pki {
    /// Issue a new CA, a proxy server certificate and an appliance client certificate.
    Init {
        /// Directory to write ca.pem, proxy.pem, appliance.pem and their keys into.
        #[arg(long)]
        dir: PathBuf,
        /// Names (DNS or IP) the proxy certificate is valid for; repeat for several.
        #[arg(long = "proxy-name", default_values = ["hsm-proxy", "localhost", "127.0.0.1"])]
        proxy_names: Vec<String>,
        /// Name in the appliance's client certificate (what proxies' allowed_clients lists).
        #[arg(long, default_value = "appliance")]
        client_name: String,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("appliance: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Pki(Pki::Init { dir, proxy_names, client_name }) => {
            let names: Vec<&str> = proxy_names.iter().map(String::as_str).collect();
            let bundle = appliance::pki::write_bundle(&dir, &names, &client_name)?;
            println!("CA certificate      {}", bundle.ca_cert.display());
            println!("CA key              {}", bundle.ca_key.display());
            println!("proxy certificate   {} ({})", bundle.proxy_cert.display(), names.join(", "));
            println!("proxy key           {}", bundle.proxy_key.display());
            println!("client certificate  {} ({client_name})", bundle.client_cert.display());
            println!("client key          {}", bundle.client_key.display());
            Ok(())
        }
    }
}
