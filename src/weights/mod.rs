//! Weight files: reading `.safetensors`, `.ot` and torch `.pth` (zip and legacy)
//! without executing anything, writing `.safetensors` atomically, and copying a file's
//! tensors into a model's variables with every mismatch reported by name.

pub mod pickle;
mod torch_file;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::fsutil;

/// Largest weight file read into memory (ResNet-152 in float32 is 241 MB).
pub(crate) const MAX_FILE_BYTES: u64 = 4 << 30;

/// Why a weight file could not be read or applied.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The pickle inside was refused (forbidden global, malformed, truncated).
    #[error("unsafe or malformed pickle: {0}")]
    Pickle(String),
    /// The file's structure lies or is broken.
    #[error("malformed weight file: {0}")]
    Malformed(String),
    /// Not a format this program reads.
    #[error("unrecognised weight file format: {0}")]
    UnknownFormat(String),
    /// The tensors do not fit the model.
    #[error("the weights do not fit the model:\n{0}")]
    Mismatch(MismatchReport),
}

/// File formats, recognised by content (not extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Hugging Face safetensors.
    Safetensors,
    /// torch.save since 1.6, or a tch/TorchScript `.ot` archive (both zip).
    TorchZip,
    /// torch.save before 1.6 (pickles followed by raw storages).
    TorchLegacy,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Safetensors => "safetensors",
            Format::TorchZip => "torch zip archive (.pth since torch 1.6, or .ot)",
            Format::TorchLegacy => "legacy torch pickle (.pth before torch 1.6)",
        })
    }
}

/// The tensors of a weight file, in file order, in their stored dtypes.
pub struct WeightFile {
    /// The detected format.
    pub format: Format,
    /// `(name, tensor)` pairs, CPU, contiguous.
    pub tensors: Vec<(String, Tensor)>,
}

/// Detects the format of `data` from its first bytes.
pub fn detect(data: &[u8]) -> Result<Format, WeightsError> {
    if data.starts_with(b"PK\x03\x04") {
        return Ok(Format::TorchZip);
    }
    // Legacy torch: PROTO 2, then LONG1 of the 10-byte magic number.
    if data.starts_with(b"\x80\x02\x8a\x0a") {
        return Ok(Format::TorchLegacy);
    }
    // safetensors: u64 header length, then a JSON object.
    if data.len() >= 9 && data[8] == b'{' {
        return Ok(Format::Safetensors);
    }
    Err(WeightsError::UnknownFormat(
        "expected .safetensors, a torch .pth (zip or legacy) or a tch .ot archive".into(),
    ))
}

/// Reads every tensor of a weight file. Nothing in the file is executed.
pub fn read_file(path: &Path) -> Result<WeightFile, WeightsError> {
    let io = |source| WeightsError::Io {
        path: path.display().to_string(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE_BYTES {
        return Err(WeightsError::Malformed(format!(
            "{} is {len} bytes, more than the {MAX_FILE_BYTES}-byte limit",
            path.display()
        )));
    }
    let data = std::fs::read(path).map_err(io)?;
    read_bytes(&data)
}

/// Reads every tensor of a weight file already in memory.
pub fn read_bytes(data: &[u8]) -> Result<WeightFile, WeightsError> {
    let format = detect(data)?;
    let tensors = match format {
        Format::Safetensors => read_safetensors(data)?,
        Format::TorchZip => torch_file::read_zip(data)?,
        Format::TorchLegacy => torch_file::read_legacy(data)?,
    };
    Ok(WeightFile { format, tensors })
}

fn read_safetensors(data: &[u8]) -> Result<Vec<(String, Tensor)>, WeightsError> {
    use safetensors::Dtype;
    let st = safetensors::SafeTensors::deserialize(data)
        .map_err(|e| WeightsError::Malformed(format!("safetensors: {e:?}")))?;
    let mut out = Vec::new();
    // safetensors stores names sorted; keep that order.
    let mut views = st.tensors();
    views.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in views {
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            Dtype::I64 => Kind::Int64,
            Dtype::I32 => Kind::Int,
            Dtype::I16 => Kind::Int16,
            Dtype::I8 => Kind::Int8,
            Dtype::U8 => Kind::Uint8,
            Dtype::BOOL => Kind::Bool,
            other => {
                return Err(WeightsError::Malformed(format!(
                    "tensor `{name}` has unsupported dtype {other:?}"
                )))
            }
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.push((name, Tensor::from_data_size(view.data(), &shape, kind)));
    }
    Ok(out)
}

/// A tensor viewed as safetensors data.
struct StView {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl safetensors::View for &StView {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn st_view(name: &str, t: &Tensor) -> Result<StView, WeightsError> {
    use safetensors::Dtype;
    let t = t.to_device(tch::Device::Cpu).contiguous();
    let dtype = match t.kind() {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        other => {
            return Err(WeightsError::Malformed(format!(
                "tensor `{name}` has unsupported kind {other:?}"
            )))
        }
    };
    let numel = t.numel();
    let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut bytes, numel);
    Ok(StView {
        dtype,
        shape: t.size().iter().map(|&d| d as usize).collect(),
        bytes,
    })
}

/// Writes tensors as `.safetensors`, atomically (temp file, fsync, rename).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> anyhow::Result<()> {
    let views: Vec<(String, StView)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), st_view(n, t)?)))
        .collect::<Result<_, WeightsError>>()?;
    let bytes = safetensors::serialize(views.iter().map(|(n, v)| (n.as_str(), v)), metadata)
        .map_err(|e| anyhow::anyhow!("safetensors: {e:?}"))?;
    fsutil::write_atomic(path, &bytes)
}

/// What did not fit when copying a file into a model, by name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MismatchReport {
    /// Model variables the file lacks.
    pub missing: Vec<String>,
    /// File tensors the model has no variable for (beyond those the caller allows).
    pub unexpected: Vec<String>,
    /// `(name, model shape, file shape)`.
    pub shape: Vec<(String, Vec<i64>, Vec<i64>)>,
}

impl MismatchReport {
    fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shape.is_empty()
    }
}

impl fmt::Display for MismatchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |f: &mut fmt::Formatter<'_>, what: &str, names: &[String]| -> fmt::Result {
            if names.is_empty() {
                return Ok(());
            }
            let shown: Vec<&str> = names.iter().take(12).map(String::as_str).collect();
            let more = if names.len() > 12 {
                format!(" … and {} more", names.len() - 12)
            } else {
                String::new()
            };
            writeln!(f, "  {what} ({}): {}{more}", names.len(), shown.join(", "))
        };
        list(f, "missing from the file", &self.missing)?;
        list(f, "in the file but not in the model", &self.unexpected)?;
        for (name, model, file) in self.shape.iter().take(12) {
            writeln!(f, "  shape of {name}: model {model:?}, file {file:?}")?;
        }
        if self.shape.len() > 12 {
            writeln!(f, "  … and {} more shape mismatches", self.shape.len() - 12)?;
        }
        Ok(())
    }
}

/// What copying a file into a model did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// Variables set from the file.
    pub loaded: usize,
    /// File tensors skipped on purpose (`num_batches_tracked`, the original classifier).
    pub ignored: usize,
    /// Tensors stored as float16/bfloat16/float64 and converted to float32.
    pub converted: usize,
}

/// Copies `file`'s tensors into `vars` (name → variable). Every variable must be in
/// the file with the same shape; file tensors named `*.num_batches_tracked` or
/// accepted by `ignore` (e.g. the original classifier) are skipped. Nothing is
/// copied unless everything fits.
pub fn apply(
    vars: &HashMap<String, Tensor>,
    file: &WeightFile,
    ignore: impl Fn(&str) -> bool,
) -> Result<LoadReport, WeightsError> {
    let by_name: BTreeMap<&str, &Tensor> =
        file.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut report = MismatchReport::default();
    let mut ignored = 0;
    for name in by_name.keys() {
        if vars.contains_key(*name) {
            continue;
        }
        if name.ends_with("num_batches_tracked") || ignore(name) {
            ignored += 1;
        } else {
            report.unexpected.push(name.to_string());
        }
    }
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in &names {
        match by_name.get(name.as_str()) {
            None => report.missing.push(name.to_string()),
            Some(t) if t.size() != vars[*name].size() => {
                report
                    .shape
                    .push((name.to_string(), vars[*name].size(), t.size()))
            }
            Some(_) => {}
        }
    }
    if !report.is_empty() {
        return Err(WeightsError::Mismatch(report));
    }
    let mut converted = 0;
    tch::no_grad(|| {
        for name in &names {
            let src = by_name[name.as_str()];
            if src.kind() != vars[*name].kind() {
                converted += 1;
            }
            let mut dst = vars[*name].shallow_clone();
            dst.copy_(src);
        }
    });
    Ok(LoadReport {
        loaded: names.len(),
        ignored,
        converted,
    })
}

/// One line per tensor: name, dtype, shape; then totals. For `weights inspect`.
pub fn describe(file: &WeightFile) -> String {
    let mut out = format!("format: {}\n", file.format);
    let mut total = 0usize;
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for (name, t) in &file.tensors {
        let numel = t.numel();
        total += numel;
        *kinds.entry(format!("{:?}", t.kind())).or_default() += 1;
        out.push_str(&format!(
            "{name:<60} {:<9} {:?}\n",
            format!("{:?}", t.kind()),
            t.size()
        ));
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    out.push_str(&format!(
        "{} tensors, {} values ({})\n",
        file.tensors.len(),
        total,
        kinds.join(", ")
    ));
    out
}

/// What `tlcap-tui weights` does.
#[derive(Debug, Clone)]
pub enum WeightsAction {
    /// Convert a weight file to .safetensors.
    Import {
        /// The file to read.
        input: std::path::PathBuf,
        /// The .safetensors file to write.
        output: std::path::PathBuf,
    },
    /// List a weight file's tensors.
    Inspect {
        /// The file to read.
        file: std::path::PathBuf,
    },
}

/// `tlcap-tui weights import|inspect`.
pub fn run_cli(action: WeightsAction) -> anyhow::Result<()> {
    use anyhow::Context;
    match action {
        WeightsAction::Inspect { file } => {
            let wf = read_file(&file).with_context(|| format!("cannot load {}", file.display()))?;
            crate::stdout::line(describe(&wf).trim_end())?;
        }
        WeightsAction::Import { input, output } => {
            let wf =
                read_file(&input).with_context(|| format!("cannot load {}", input.display()))?;
            let source = input
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let metadata = std::collections::HashMap::from([
                ("source".to_owned(), source),
                ("source_format".to_owned(), wf.format.to_string()),
            ]);
            write_safetensors(&output, &wf.tensors, Some(metadata))?;
            let bytes = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
            crate::stdout::line(format!(
                "wrote {} tensors ({:.1} MB) from {} ({}) to {}",
                wf.tensors.len(),
                bytes as f64 / 1e6,
                input.display(),
                wf.format,
                output.display()
            ))?;
        }
    }
    Ok(())
}
