//! `weir prompt list` and `weir prompt render`: the prompts of a config, as served.
//!
//! Owns: the commands' arguments and output. Must not: render any other way than serving
//! does; both go through [`weir::prompts::PromptStore`].

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Map, Value};
use weir::config::ConfigSource;
use weir::prompts::PromptStore;

#[derive(Subcommand)]
pub enum PromptCommand {
    /// Every prompt: its versions, the default one, and a hash of each version's content.
    List {
        /// Config file; default `config/weir.yaml`, else the built-in config.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Print the messages a prompt version renders, as JSON (exit 1 with the error otherwise).
    Render {
        /// `ID` (its default version) or `ID@VERSION`.
        prompt: String,
        /// A variable as a string: `--var question="How do I rotate keys?"`. Repeatable.
        #[arg(long = "var", value_name = "NAME=VALUE")]
        vars: Vec<String>,
        /// A variable as JSON (lists, numbers, objects): `--var-json docs='["a","b"]'`.
        #[arg(long = "var-json", value_name = "NAME=JSON")]
        json_vars: Vec<String>,
        /// Config file; default `config/weir.yaml`, else the built-in config.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

pub fn run(command: PromptCommand) -> ExitCode {
    match command {
        PromptCommand::List { config, format } => list(config, format),
        PromptCommand::Render { prompt, vars, json_vars, config } => render(config, &prompt, &vars, &json_vars),
    }
}

/// The compiled prompts of the config `weir serve` would read.
fn store(config: Option<PathBuf>) -> Result<PromptStore, String> {
    let loaded = ConfigSource::for_serve(config.as_deref()).load().map_err(|err| err.to_string())?;
    Ok(PromptStore::build(&loaded.config.prompts))
}

fn list(config: Option<PathBuf>, format: ListFormat) -> ExitCode {
    let store = match store(config) {
        Ok(store) => store,
        Err(err) => return fail(&err),
    };
    let text = match format {
        ListFormat::Json => match serde_json::to_string_pretty(&store.list()) {
            Ok(json) => json + "\n",
            Err(err) => return fail(&err.to_string()),
        },
        ListFormat::Table => table(&store),
    };
    print(&text)
}

fn table(store: &PromptStore) -> String {
    let mut rows = vec![["PROMPT".to_string(), "VERSION".into(), "DEFAULT".into(), "HASH".into(), "VARIABLES".into()]];
    for prompt in store.list() {
        for version in &prompt.versions {
            let variables: Vec<String> = version
                .variables
                .iter()
                .map(|v| match (v.required, v.default) {
                    (true, _) => format!("{} (required)", v.name),
                    (false, Some(default)) => format!("{}={default}", v.name),
                    (false, None) => v.name.to_string(),
                })
                .collect();
            rows.push([
                prompt.id.to_string(),
                version.version.to_string(),
                if version.version == prompt.default { "*".into() } else { String::new() },
                // 12 hex digits tell versions apart; `--format json` has the whole hash.
                version.hash.chars().take("sha256:".len() + 12).collect(),
                variables.join(", "),
            ]);
        }
    }
    let widths: Vec<usize> = (0..5).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn render(config: Option<PathBuf>, prompt: &str, vars: &[String], json_vars: &[String]) -> ExitCode {
    let mut variables = Map::new();
    for pair in vars {
        let Some((name, value)) = pair.split_once('=') else {
            return fail(&format!("--var {pair}: expected NAME=VALUE"));
        };
        variables.insert(name.to_string(), Value::String(value.to_string()));
    }
    for pair in json_vars {
        let Some((name, value)) = pair.split_once('=') else {
            return fail(&format!("--var-json {pair}: expected NAME=JSON"));
        };
        match serde_json::from_str(value) {
            Ok(value) => variables.insert(name.to_string(), value),
            Err(err) => return fail(&format!("--var-json {name}: not JSON: {err}")),
        };
    }
    let store = match store(config) {
        Ok(store) => store,
        Err(err) => return fail(&err),
    };
    let (id, version) = match prompt.split_once('@') {
        Some((id, version)) => (id, Some(version)),
        None => (prompt, None),
    };
    let rendered = match store.render(id, version, &variables) {
        Ok(rendered) => rendered,
        Err(err) => return fail(&format!("{err} (param {})", err.param())),
    };
    match serde_json::to_string_pretty(&rendered.messages) {
        Ok(json) => print(&(json + "\n")),
        Err(err) => fail(&err.to_string()),
    }
}

fn print(text: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("weir: {message}");
    ExitCode::FAILURE
}
