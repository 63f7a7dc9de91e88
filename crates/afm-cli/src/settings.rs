//! One configuration mechanism for every verb. A verb's configuration is
//! its library's config struct, whose `Default` is the one place defaults
//! live, with three layers laid over it, each checked as it is applied:
//!
//! 1. `--config FILE`: a TOML file with any of the struct's fields;
//! 2. the verb's flags (only those given; a flag is a field's name);
//! 3. `--set KEY=VALUE`: any field by its dotted name (`--set optim.lr=1e-3`,
//!    `--set loss.divergence=jsd`), the value a TOML literal or a bare string.
//!
//! An unknown key, or a value of the wrong type, is an error that names the
//! layer and the field (with the file's line for `--config`).

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;

/// `--config` and `--set`, flattened into every verb's arguments.
#[derive(Args, Debug, Clone, Default)]
pub struct Layers {
    /// TOML file with any field of this verb's configuration (the flags and
    /// --set override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Set any field: KEY=VALUE with a dotted key and a TOML value, e.g.
    /// `--set optim.lr=1e-3` (repeatable; applied last).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// Lay `top` over `base`, table by table.
fn overlay(base: &mut toml::Value, top: toml::Value) {
    match (base, top) {
        (toml::Value::Table(b), toml::Value::Table(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    Some(slot) => overlay(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Set the dotted `key` of `base` to `value`, creating tables on the way.
fn set_path(base: &mut toml::Value, key: &str, value: toml::Value) -> Result<()> {
    let mut slot = base;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() {
            bail!("{key:?} is not a field name");
        }
        let toml::Value::Table(t) = slot else {
            bail!("{key:?}: {} is not a table", parts[..i].join("."));
        };
        if i + 1 == parts.len() {
            t.insert(p.to_string(), value);
            return Ok(());
        }
        slot = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    Ok(())
}

/// A `--set` value: a TOML literal (`3`, `1e-3`, `true`, `"x"`, `[1, 2]`),
/// else the bare text as a string.
fn literal(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// Deserialize a merged value (through TOML text, so errors quote the
/// offending line).
fn parse<T: DeserializeOwned>(v: &toml::Value) -> Result<T> {
    let text = toml::to_string(v).context("writing the merged configuration")?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
}

/// `T::default()` <- `--config` <- `flags` (a struct whose given fields
/// serialize under the config's dotted field names) <- `--set`.
pub fn resolve<T>(layers: &Layers, flags: &impl Serialize) -> Result<T>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut v = toml::Value::try_from(T::default()).context("the default configuration")?;
    if let Some(p) = &layers.config {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        toml::from_str::<T>(&text).map_err(|e| {
            anyhow::anyhow!("--config {}: {}", p.display(), e.to_string().trim_end())
        })?;
        let file: toml::Value =
            toml::from_str(&text).with_context(|| format!("--config {}", p.display()))?;
        overlay(&mut v, file);
    }
    let given = toml::Value::try_from(flags).context("the command-line flags")?;
    if let toml::Value::Table(t) = given {
        for (k, x) in t {
            set_path(&mut v, &k, x).with_context(|| format!("--{}", k.replace('_', "-")))?;
        }
    }
    parse::<T>(&v).context("the command-line flags")?;
    for s in &layers.set {
        let Some((k, raw)) = s.split_once('=') else {
            bail!("--set {s:?}: expected KEY=VALUE");
        };
        set_path(&mut v, k.trim(), literal(raw.trim())).with_context(|| format!("--set {s}"))?;
        parse::<T>(&v).with_context(|| format!("--set {s}"))?;
    }
    parse(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, Default, Debug, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        lr: f64,
        name: String,
    }

    #[derive(Serialize, serde::Deserialize, Default, Debug, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Cfg {
        steps: usize,
        inner: Inner,
    }

    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        steps: Option<usize>,
        #[serde(rename = "inner.lr", skip_serializing_if = "Option::is_none")]
        lr: Option<f64>,
    }

    #[test]
    fn layers_apply_in_order_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "steps = 5\n[inner]\nlr = 0.5\nname = \"a\"\n").unwrap();
        let layers = Layers {
            config: Some(file.clone()),
            set: vec!["inner.name=b".into()],
        };
        let flags = Flags {
            steps: None,
            lr: Some(0.25),
        };
        let c: Cfg = resolve(&layers, &flags).unwrap();
        assert_eq!(
            c,
            Cfg {
                steps: 5,
                inner: Inner {
                    lr: 0.25,
                    name: "b".into()
                }
            }
        );

        std::fs::write(&file, "steps = 5\nstepz = 6\n").unwrap();
        let e = format!(
            "{:#}",
            resolve::<Cfg>(&layers, &Flags::default()).unwrap_err()
        );
        assert!(e.contains("c.toml") && e.contains("stepz"), "{e}");

        let bad = Layers {
            config: None,
            set: vec!["inner.lr=fast".into()],
        };
        let e = format!("{:#}", resolve::<Cfg>(&bad, &Flags::default()).unwrap_err());
        assert!(e.contains("--set inner.lr=fast") && e.contains("lr"), "{e}");
        let bad = Layers {
            config: None,
            set: vec!["inner.rate=1".into()],
        };
        let e = format!("{:#}", resolve::<Cfg>(&bad, &Flags::default()).unwrap_err());
        assert!(e.contains("rate"), "{e}");
    }
}
