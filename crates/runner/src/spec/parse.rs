//! Reading an experiment file: TOML into the schema, each variant's protocol changes merged over
//! the file's, and where a field stands in the text for error messages.

use super::{Experiment, Protocol};
use serde::Deserialize;

impl Experiment {
    /// Parse TOML; the message carries line, column and what was expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        let message = |e: toml::de::Error| e.to_string().trim_end().to_string();
        let mut spec: Self = toml::from_str(text).map_err(message)?;
        let raw: toml::Table = toml::from_str(text).map_err(message)?;
        let base = raw.get("protocol").cloned();
        if let Some(toml::Value::Table(base)) = &base {
            one_seed_key(base, "protocol", text)?;
        }
        spec.protocol.seed = first_seed(&spec.protocol);
        spec.variant_protocols = spec
            .variants
            .iter()
            .enumerate()
            .map(|(i, v)| match (&v.protocol_changes, &base) {
                (Some(changes), Some(toml::Value::Table(base))) => {
                    let mut merged = base.clone();
                    // A variant's own `seed` replaces the file's `seeds`, and the other way round.
                    for (key, other) in [("seed", "seeds"), ("seeds", "seed")] {
                        if changes.contains_key(key) {
                            merged.remove(other);
                        }
                    }
                    merge(&mut merged, changes);
                    one_seed_key(&merged, &format!("variant[{i}].protocol"), text)?;
                    Protocol::deserialize(toml::Value::Table(merged))
                        .map_err(|e| {
                            let field = format!("variant[{i}].protocol");
                            let at = locate(text, &field)
                                .map(|(line, column)| format!("line {line}, column {column}: "))
                                .unwrap_or_default();
                            format!("{at}{field}: {}", e.to_string().trim_end())
                        })
                        .map(|mut protocol| {
                            protocol.seed = first_seed(&protocol);
                            protocol
                        })
                }
                _ => Ok(spec.protocol.clone()),
            })
            .collect::<Result<_, _>>()?;
        Ok(spec)
    }
}

/// That a protocol table gives exactly one of `seed` and `seeds`.
fn one_seed_key(table: &toml::Table, field: &str, text: &str) -> Result<(), String> {
    let at = |key: &str| {
        locate(text, &format!("{field}.{key}"))
            .map(|(line, column)| format!("line {line}, column {column}: "))
            .unwrap_or_default()
    };
    match (table.contains_key("seed"), table.contains_key("seeds")) {
        (true, true) => Err(format!(
            "{}{field}.seeds: expected `seed = N` or `seeds = [N, ...]`, not both",
            at("seeds")
        )),
        (false, false) => Err(format!(
            "{field}: missing field `seed` (or `seeds = [1, 2, 3]` for one run per seed)"
        )),
        _ => Ok(()),
    }
}

/// The seed a sweep's protocol reports where one seed is asked for (its first).
fn first_seed(protocol: &Protocol) -> u64 {
    match &protocol.seeds {
        Some(seeds) => seeds.first().copied().unwrap_or_default(),
        None => protocol.seed,
    }
}

/// `changes` written over `base`, tables merged key by key.
fn merge(base: &mut toml::Table, changes: &toml::Table) {
    for (key, value) in changes {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(change)) => merge(inner, change),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Line and column (1-based) of the value at a dotted path such as `protocol.optimizer.lr` or
/// `variant[1].name`, for error messages.
pub fn locate(text: &str, field: &str) -> Option<(usize, usize)> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut table: &DeTable = root.get_ref();
    let mut span = None;
    let parts: Vec<&str> = field.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let (key, index) = match part.split_once('[') {
            Some((key, rest)) => (key, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (*part, None),
        };
        let value = table.iter().find(|(k, _)| k.get_ref().as_ref() == key)?.1;
        let value = match (value.get_ref(), index) {
            (DeValue::Array(items), Some(i)) => items.get(i)?,
            _ => value,
        };
        span = Some(value.span());
        if i + 1 < parts.len() {
            let DeValue::Table(inner) = value.get_ref() else {
                return None;
            };
            table = inner;
        }
    }
    let offset = span?.start;
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, column))
}
