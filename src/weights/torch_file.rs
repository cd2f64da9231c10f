//! torch `.pth` files (legacy pre-1.6 and zip) and tch `.ot` archives, read without
//! executing anything: the pickle goes through [`super::pickle`], the raw storages
//! are bounds-checked against the file before any tensor is made.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use tch::{Kind, Tensor};

use super::pickle::{self, Policy, StorageType, Value};
use super::WeightsError;

/// The 80-bit magic number that opens a legacy torch file (as a LONG1 payload).
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
/// The protocol version legacy torch files carry.
const LEGACY_PROTOCOL: i64 = 1001;

/// A tensor as the pickle describes it, before its bytes are attached.
struct TensorRef {
    storage_key: String,
    storage_type: StorageType,
    /// Elements in the storage according to the persistent id.
    storage_numel: i64,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// Reads a legacy (pre-1.6) torch file: magic, protocol, sys_info and the object
/// pickles, the storage-key list, then for each key an int64 element count and the
/// raw little-endian data.
pub fn read_legacy(data: &[u8]) -> Result<Vec<(String, Tensor)>, WeightsError> {
    let bad = |m: String| WeightsError::Malformed(m);
    let mut pos = 0;
    let mut next = |what: &str| -> Result<Value, WeightsError> {
        let (v, used) = pickle::read(&data[pos..], Policy::StateDict)
            .map_err(|e| WeightsError::Pickle(format!("{what}: {e}")))?;
        pos += used;
        Ok(v)
    };
    match next("magic number")? {
        Value::BigInt(b) if b == LEGACY_MAGIC => {}
        _ => {
            return Err(bad(
                "not a torch file: the legacy magic number is missing".into()
            ))
        }
    }
    if next("protocol version")?.as_int() != Some(LEGACY_PROTOCOL) {
        return Err(bad("unsupported legacy torch protocol version".into()));
    }
    let sys_info = next("sys_info")?;
    if dict_get(&sys_info, "little_endian") == Some(&Value::Bool(false)) {
        return Err(bad("big-endian torch files are not supported".into()));
    }
    let root = next("state_dict")?;
    let keys = next("storage keys")?;
    let keys: Vec<String> = keys
        .as_seq()
        .and_then(|s| s.iter().map(|k| k.as_str().map(str::to_owned)).collect())
        .ok_or_else(|| bad("the storage key list is not a list of strings".into()))?;

    // Every storage in the file is sized by its type, including storages the state_dict
    // does not use (an optimizer's, in a checkpoint), or the size headers after them
    // would be read from the middle of data.
    let mut types: HashMap<String, StorageType> = HashMap::new();
    storage_types(&root, &mut types)?;
    let entries = state_dict_entries(root)?;
    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    for key in keys {
        let header = data.get(pos..pos + 8).ok_or_else(|| {
            bad(format!(
                "storage {key}: file ends before its size (byte {pos})"
            ))
        })?;
        let numel = i64::from_le_bytes(header.try_into().unwrap());
        pos += 8;
        let element_size = types.get(&key).map_or(1, |t| t.element_size());
        let bytes = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(element_size))
            .ok_or_else(|| bad(format!("storage {key}: invalid element count {numel}")))?;
        let end = pos
            .checked_add(bytes)
            .filter(|&end| end <= data.len())
            .ok_or_else(|| {
                bad(format!(
                    "storage {key} claims {bytes} bytes at byte {pos}, but the file has only {} \
                     bytes",
                    data.len()
                ))
            })?;
        storages.insert(key, &data[pos..end]);
        pos = end;
    }
    materialise(entries, |key| storages.get(key).copied())
}

/// Reads a zip-format torch file (`torch.save` since 1.6) or a tch `.ot` archive:
/// `<prefix>/data.pkl` plus one `<prefix>/data/<key>` entry per storage.
pub fn read_zip(data: &[u8]) -> Result<Vec<(String, Tensor)>, WeightsError> {
    let bad = |m: String| WeightsError::Malformed(m);
    let mut zip = zip::ZipArchive::new(Cursor::new(data))
        .map_err(|e| bad(format!("not a readable zip archive: {e}")))?;
    let names: Vec<String> = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("unreadable entry name in the zip archive: {e}")))?;
    let pkl = names
        .iter()
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
        .ok_or_else(|| bad("zip archive has no <name>/data.pkl".into()))?
        .clone();
    let prefix = pkl.trim_end_matches("data.pkl").to_owned();
    // TorchScript archives (tch `.ot`) name their module classes `__torch__.*`; these
    // are inert containers here, never code.
    let policy = if names
        .iter()
        .any(|n| n.starts_with(&format!("{prefix}code/")))
    {
        Policy::TorchScriptArchive
    } else {
        Policy::StateDict
    };
    if let Some(order) = read_entry(&mut zip, &format!("{prefix}byteorder"), 16)? {
        if order != b"little" {
            return Err(bad("big-endian torch files are not supported".into()));
        }
    }
    let pickle_bytes = read_entry(&mut zip, &pkl, 256 << 20)?.unwrap_or_default();
    let (root, _) = pickle::read(&pickle_bytes, policy)
        .map_err(|e| WeightsError::Pickle(format!("{pkl}: {e}")))?;
    let entries = state_dict_entries(root)?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    for (_, t) in &entries {
        if storages.contains_key(&t.storage_key) {
            continue;
        }
        let entry = format!("{prefix}data/{}", t.storage_key);
        // Never trust the declared size beyond the file-size limit (zip bombs).
        let limit = storage_bytes(t)?.min(super::MAX_FILE_BYTES as usize);
        let bytes = read_entry(&mut zip, &entry, limit)?
            .ok_or_else(|| bad(format!("storage {} is missing ({entry})", t.storage_key)))?;
        storages.insert(t.storage_key.clone(), bytes);
    }
    let mut tensors = materialise(entries, |key| storages.get(key).map(Vec::as_slice))?;
    if policy == Policy::TorchScriptArchive {
        // tch writes `a.b.weight` as the attribute `a|b|weight`.
        for (name, _) in &mut tensors {
            *name = name.replace('|', ".");
        }
    }
    Ok(tensors)
}

/// Bytes a tensor's storage should have, from its persistent id.
fn storage_bytes(t: &TensorRef) -> Result<usize, WeightsError> {
    usize::try_from(t.storage_numel)
        .ok()
        .and_then(|n| n.checked_mul(t.storage_type.element_size()))
        .filter(|&n| n <= 1 << 40)
        .ok_or_else(|| {
            WeightsError::Malformed(format!(
                "storage {} has an invalid size {}",
                t.storage_key, t.storage_numel
            ))
        })
}

/// Reads a zip entry, refusing entries larger than `limit` (never trusting the header).
fn read_entry(
    zip: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
    limit: usize,
) -> Result<Option<Vec<u8>>, WeightsError> {
    let entry = match zip.by_name(name) {
        Ok(e) => e,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(WeightsError::Malformed(format!("{name}: {e}"))),
    };
    let mut out = Vec::new();
    entry
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| WeightsError::Malformed(format!("{name}: {e}")))?;
    if out.len() > limit {
        return Err(WeightsError::Malformed(format!(
            "{name} is larger than its declared size"
        )));
    }
    Ok(Some(out))
}

/// Records the element type of every storage a persistent id anywhere in `v` names;
/// a key named with two types is refused.
fn storage_types(v: &Value, out: &mut HashMap<String, StorageType>) -> Result<(), WeightsError> {
    match v {
        Value::Persistent(pid) => {
            if let Some([_, Value::Global(pickle::Global::Storage(t)), key, ..]) = pid.as_seq() {
                let key = match key {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => return Ok(()),
                };
                if out.insert(key.clone(), *t).is_some_and(|old| old != *t) {
                    return Err(WeightsError::Malformed(format!(
                        "storage {key} is named with two element types"
                    )));
                }
            }
        }
        Value::Tuple(items) | Value::List(items) => {
            for i in items {
                storage_types(i, out)?;
            }
        }
        Value::Dict(pairs) => {
            for (k, v) in pairs {
                storage_types(k, out)?;
                storage_types(v, out)?;
            }
        }
        Value::Tensor { storage, .. } => storage_types(storage, out)?,
        Value::Object { state, .. } => storage_types(state, out)?,
        _ => {}
    }
    Ok(())
}

fn dict_get<'v>(dict: &'v Value, key: &str) -> Option<&'v Value> {
    match dict {
        Value::Dict(pairs) => pairs
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// The `name -> tensor` entries of a state_dict. Accepts a plain state_dict, a
/// checkpoint that wraps one under `state_dict` or `model`, and a TorchScript module
/// object whose attributes are tensors (tch `.ot`).
fn state_dict_entries(root: Value) -> Result<Vec<(String, TensorRef)>, WeightsError> {
    let bad = |m: String| WeightsError::Malformed(m);
    let root = match root {
        Value::Object { state, .. } => *state,
        other => other,
    };
    let Value::Dict(pairs) = root else {
        return Err(bad(
            "the file holds no state_dict (a dict of tensors): it may be a whole pickled \
             model, which cannot be loaded safely; save `model.state_dict()` instead"
                .into(),
        ));
    };
    let all_tensors = pairs.iter().all(|(_, v)| matches!(v, Value::Tensor { .. }));
    if !all_tensors {
        for wrapper in ["state_dict", "model"] {
            if let Some((_, inner @ Value::Dict(_))) =
                pairs.iter().find(|(k, _)| k.as_str() == Some(wrapper))
            {
                return state_dict_entries(inner.clone());
            }
        }
    }
    let mut out = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        let name = k
            .as_str()
            .ok_or_else(|| bad("a state_dict key is not a string".into()))?
            .to_owned();
        match v {
            Value::Tensor {
                storage,
                offset,
                size,
                stride,
            } => out.push((
                name.clone(),
                tensor_ref(&name, &storage, offset, size, stride)?,
            )),
            // tch `.ot` modules carry a `training` flag beside their tensors.
            Value::Bool(_) if name == "training" => {}
            other => {
                return Err(bad(format!(
                    "entry `{name}` is a {}, not a tensor",
                    other.kind()
                )))
            }
        }
    }
    Ok(out)
}

fn tensor_ref(
    name: &str,
    storage: &Value,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
) -> Result<TensorRef, WeightsError> {
    let bad = || WeightsError::Malformed(format!("tensor `{name}` has a malformed storage id"));
    let Value::Persistent(pid) = storage else {
        return Err(bad());
    };
    let items = pid.as_seq().ok_or_else(bad)?;
    // ('storage', type, key, location, numel[, view_metadata])
    if items.len() < 5 || items[0].as_str() != Some("storage") {
        return Err(bad());
    }
    let Value::Global(pickle::Global::Storage(storage_type)) = items[1] else {
        return Err(bad());
    };
    // Legacy storage views (pre-1.0 files) are not supported: refuse, don't misread.
    if items.get(5).is_some_and(|v| *v != Value::None) {
        return Err(WeightsError::Malformed(format!(
            "tensor `{name}` uses a storage view (a very old format); re-save the file with a \
             recent torch"
        )));
    }
    let storage_key = match &items[2] {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => return Err(bad()),
    };
    if storage_key.contains('/') || storage_key.contains("..") {
        return Err(bad());
    }
    let storage_numel = items[4].as_int().ok_or_else(bad)?;
    Ok(TensorRef {
        storage_key,
        storage_type,
        storage_numel,
        offset,
        size,
        stride,
    })
}

fn kind_of(t: StorageType) -> Kind {
    match t {
        StorageType::Float => Kind::Float,
        StorageType::Double => Kind::Double,
        StorageType::Half => Kind::Half,
        StorageType::BFloat16 => Kind::BFloat16,
        StorageType::Long => Kind::Int64,
        StorageType::Int => Kind::Int,
        StorageType::Short => Kind::Int16,
        StorageType::Char => Kind::Int8,
        StorageType::Byte => Kind::Uint8,
        StorageType::Bool => Kind::Bool,
    }
}

/// Builds tensors from their references and the storage bytes, checking that every
/// view lies inside its storage and its storage inside the file.
fn materialise<'s>(
    entries: Vec<(String, TensorRef)>,
    storage: impl Fn(&str) -> Option<&'s [u8]>,
) -> Result<Vec<(String, Tensor)>, WeightsError> {
    let mut cache: HashMap<String, (StorageType, Tensor)> = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for (name, t) in entries {
        let bad = |m: &str| WeightsError::Malformed(format!("tensor `{name}`: {m}"));
        let bytes = storage(&t.storage_key).ok_or_else(|| bad("its storage is missing"))?;
        let element_size = t.storage_type.element_size();
        let numel = (bytes.len() / element_size) as i64;
        if t.storage_numel > numel {
            return Err(bad(&format!(
                "storage {} should hold {} elements but has {numel}",
                t.storage_key, t.storage_numel
            )));
        }
        if t.offset < 0 || t.size.iter().any(|&s| s < 0) || t.stride.iter().any(|&s| s < 0) {
            return Err(bad("negative offset, size or stride"));
        }
        let empty = t.size.contains(&0);
        let view_numel = t.size.iter().try_fold(1i64, |acc, &s| acc.checked_mul(s));
        if !matches!(view_numel, Some(n) if n <= numel.max(1)) {
            return Err(bad("it has more elements than its storage"));
        }
        if !empty {
            let last = t
                .size
                .iter()
                .zip(&t.stride)
                .try_fold(t.offset, |acc, (&s, &st)| {
                    (s - 1).checked_mul(st).and_then(|x| acc.checked_add(x))
                });
            if !matches!(last, Some(l) if l < numel) {
                return Err(bad("its view reaches past the end of its storage"));
            }
        }
        let kind = kind_of(t.storage_type);
        let (base_type, base) = cache.entry(t.storage_key.clone()).or_insert_with(|| {
            (
                t.storage_type,
                Tensor::from_data_size(&bytes[..numel as usize * element_size], &[numel], kind),
            )
        });
        if *base_type != t.storage_type {
            return Err(bad("its storage is also used with another element type"));
        }
        let tensor = if empty {
            Tensor::zeros(&t.size, (kind, tch::Device::Cpu))
        } else {
            base.f_as_strided(&t.size, &t.stride, Some(t.offset))
                .and_then(|v| v.f_contiguous())
                .map_err(|e| bad(&e.to_string()))?
        };
        out.push((name, tensor));
    }
    Ok(out)
}
