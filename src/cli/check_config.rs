//! `xiaomaolv check-config [FILE]`.

use std::path::Path;

use super::CliError;
use crate::config::Config;

pub fn run(file: Option<&Path>) -> Result<(), CliError> {
    // The same file `serve` reads when it is given none.
    let default = Path::new(super::DEFAULT_CONFIG_FILE);
    let file = file.or_else(|| default.exists().then_some(default));
    let config = match file {
        Some(path) => Config::load(path)?,
        None => Config::embedded()?,
    };
    print!("{}", config.to_masked_toml());
    let origin = file.map_or_else(
        || "embedded defaults".to_owned(),
        |p| p.display().to_string(),
    );
    eprintln!("{origin}: configuration is valid");
    Ok(())
}
