//! Configuration files: the `fwsim` daemon's, and the PKCS#11 module's (named by the
//! `FWSIM_PKCS11_CONF` environment variable).

use std::path::{Path, PathBuf};

use firmware_sim_core::Policy;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, file_error};
use crate::transport::Endpoint;

/// The environment variable naming the PKCS#11 module's configuration file.
pub const MODULE_CONFIG_ENV: &str = "FWSIM_PKCS11_CONF";

fn default_profile() -> String {
    "ideal".into()
}

fn default_timeout_ms() -> u64 {
    30_000
}

/// `fwsim serve --config`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Endpoints to listen on: `unix:/path` or `tcp:host:port`.
    pub listen: Vec<String>,
    /// A built-in profile name or a profile file.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Where token objects persist; absent keeps them in memory.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// A fault file, re-read whenever it changes.
    #[serde(default)]
    pub fault_file: Option<PathBuf>,
    /// `standard`, or `fips`: what FIPS-mode HSMs enforce.
    #[serde(default)]
    pub policy: Policy,
}

impl DaemonConfig {
    /// Reads a daemon configuration file.
    pub fn load(path: &Path) -> Result<DaemonConfig> {
        let text = std::fs::read_to_string(path).map_err(file_error(path))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }
}

/// The device a PKCS#11 module uses: a running `fwsim`, or one inside the calling process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleConfig {
    /// A running device: `unix:/path` or `tcp:host:port`.
    #[serde(default)]
    pub device: Option<String>,
    /// A device inside the calling process.
    #[serde(default)]
    pub in_process: Option<InProcess>,
    /// How long to wait for the device to answer, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The slot id the token appears in.
    #[serde(default)]
    pub slot_id: u64,
}

/// An in-process device's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InProcess {
    /// A built-in profile name or a profile file.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Where token objects persist; absent keeps them in memory for the process's life.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// `standard`, or `fips`: what FIPS-mode HSMs enforce.
    #[serde(default)]
    pub policy: Policy,
}

/// Where a module's device is.
#[derive(Clone, Debug)]
pub enum Target {
    /// Connect to a running device.
    Remote(Endpoint),
    /// Run one in this process.
    InProcess(InProcess),
}

impl ModuleConfig {
    /// Parses a module configuration.
    pub fn parse(text: &str) -> Result<ModuleConfig> {
        let config: ModuleConfig =
            toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        config.target()?;
        Ok(config)
    }

    /// Reads the file named by `FWSIM_PKCS11_CONF`.
    pub fn from_env() -> Result<ModuleConfig> {
        let Some(path) = std::env::var_os(MODULE_CONFIG_ENV) else {
            return Err(Error::Config(format!(
                "{MODULE_CONFIG_ENV} is not set; point it at a file with `device = \"unix:/path/to/fwsim.sock\"` \
                 or an `[in_process]` section"
            )));
        };
        let path = PathBuf::from(path);
        let text = std::fs::read_to_string(&path).map_err(file_error(&path))?;
        ModuleConfig::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Which device to use; exactly one of `device` and `[in_process]` must be given.
    pub fn target(&self) -> Result<Target> {
        match (&self.device, &self.in_process) {
            (Some(endpoint), None) => Ok(Target::Remote(endpoint.parse()?)),
            (None, Some(local)) => Ok(Target::InProcess(local.clone())),
            _ => Err(Error::Config(
                "give exactly one of `device = \"unix:...\"` and an `[in_process]` section".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_configs() {
        let c = ModuleConfig::parse("device = \"unix:/tmp/x.sock\"\n").unwrap();
        assert!(matches!(c.target().unwrap(), Target::Remote(Endpoint::Unix(_))));
        assert_eq!(c.timeout_ms, 30_000);
        let c = ModuleConfig::parse("[in_process]\nprofile = \"network-hsm\"\n").unwrap();
        assert!(
            matches!(c.target().unwrap(), Target::InProcess(InProcess { ref profile, .. }) if profile == "network-hsm")
        );
        assert!(ModuleConfig::parse("").unwrap_err().to_string().contains("exactly one"));
        assert!(
            ModuleConfig::parse("device = \"/tmp/x\"\n").unwrap_err().to_string().contains("unix:")
        );
        assert!(ModuleConfig::parse("devise = 1\n").unwrap_err().to_string().contains("devise"));
    }
}
