//! `tlcap-tui doctor`: proves libtorch works and reports what matters for speed.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::runtime::{self, CpuFeatures};

/// The libtorch version this build of tch requires.
pub const REQUIRED_LIBTORCH: &str = "2.13.0";
/// The tch crate version compiled in.
pub const TCH_VERSION: &str = "0.26.0";
/// The libtorch lib dir embedded as rpath at build time.
pub const BUILD_LIBTORCH_LIB: &str = env!("TLCAP_LIBTORCH_LIB");
/// How many times doctor makes and frees a 64 MiB tensor to show whether malloc reuses
/// the memory: a tuned allocator faults in a tensor or few in all, glibc's defaults one
/// per time.
pub const ALLOCATOR_PROBE_TENSORS: usize = 16;

/// Everything `doctor` found.
#[derive(Debug, Clone)]
pub struct Report {
    pub libtorch_dir: PathBuf,
    pub libtorch_version: String,
    pub intra_op_threads: i32,
    pub inter_op_threads: i32,
    /// Threads decoding images when a dataset loads.
    pub decode_threads: usize,
    /// How malloc, which serves libtorch's CPU tensors, is set up.
    pub allocator: runtime::Allocator,
    /// Pages faulted in while a 64 MiB tensor was made and freed [`ALLOCATOR_PROBE_TENSORS`]
    /// times ([`runtime::page_faults_of_repeated_tensors`]).
    pub allocator_faults: Option<u64>,
    /// The CPU's model, family and model numbers, and CPU count ([`runtime::cpu_model`]).
    pub cpu_model: String,
    pub cpu: CpuFeatures,
    /// The CPU has bfloat16 instructions but `ATEN_CPU_CAPABILITY` or
    /// `ONEDNN_MAX_CPU_ISA` keeps libtorch off them (an older CPU emulated).
    pub bf16_limited: bool,
    pub cuda_available: bool,
    pub cuda_devices: i64,
    /// Apple's Metal backend (macOS builds).
    pub mps_available: bool,
    /// One line per GPU (`nvidia-smi`), when there is any.
    pub gpus: Vec<String>,
    pub check_result: f64,
}

/// Why libtorch cannot be found or is not the one this build needs.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// The process's memory map cannot be read.
    #[error("reading /proc/self/maps")]
    Maps(#[source] std::io::Error),
    /// No libtorch library is loaded.
    #[error("libtorch_cpu.so is not mapped into this process")]
    NotMapped,
    /// The folder has no `build-version` file.
    #[error("{file} is missing: not a libtorch directory")]
    NoVersionFile {
        file: PathBuf,
        source: std::io::Error,
    },
    /// `LIBTORCH` names no folder.
    #[error("LIBTORCH={value} is not a directory")]
    NotADirectory { value: String },
    /// `LIBTORCH` names a folder without the library.
    #[error("LIBTORCH={value} has no lib/libtorch_cpu.so")]
    NoLibrary { value: String },
    /// `LIBTORCH` names another libtorch version.
    #[error(
        "LIBTORCH={value} is libtorch {version}, but tch {TCH_VERSION} needs {REQUIRED_LIBTORCH}"
    )]
    WrongVersion { value: String, version: String },
}

/// Finds the directory of the libtorch actually loaded into this process.
pub fn loaded_libtorch_dir() -> Result<PathBuf, DoctorError> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(DoctorError::Maps)?;
    let lib = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .map(PathBuf::from)
        .ok_or(DoctorError::NotMapped)?;
    // <dir>/lib/libtorch_cpu.so -> <dir>
    Ok(lib
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or(lib))
}

/// Reads `<dir>/build-version` (the version file every libtorch distribution carries).
pub fn libtorch_version(dir: &Path) -> Result<String, DoctorError> {
    let file = dir.join("build-version");
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(source) => return Err(DoctorError::NoVersionFile { file, source }),
    };
    Ok(text.trim().split('+').next().unwrap_or("").to_string())
}

/// Checks a `LIBTORCH` setting the way the next `cargo build` will use it.
pub fn check_libtorch_setting(value: &str) -> Result<(), DoctorError> {
    let dir = Path::new(value);
    let value = value.to_string();
    if !dir.is_dir() {
        return Err(DoctorError::NotADirectory { value });
    }
    if !dir.join("lib").join("libtorch_cpu.so").is_file() {
        return Err(DoctorError::NoLibrary { value });
    }
    let version = libtorch_version(dir)?;
    if version != REQUIRED_LIBTORCH {
        return Err(DoctorError::WrongVersion { value, version });
    }
    Ok(())
}

/// A small computation whose answer is known: proves the kernels run.
/// Returns the sum of `A @ B` for A = [[1,2],[3,4]], B = [[5,6],[7,8]] (= 134).
pub fn tensor_check() -> Result<f64, tch::TchError> {
    let a = tch::Tensor::from_slice(&[1f32, 2., 3., 4.]).view([2, 2]);
    let b = tch::Tensor::from_slice(&[5f32, 6., 7., 8.]).view([2, 2]);
    let sum = a.f_matmul(&b)?.f_sum(tch::Kind::Double)?;
    f64::try_from(sum)
}

/// Runs every check. Fails with a fix-it message when libtorch cannot be used.
pub fn run() -> anyhow::Result<Report> {
    const FIX: &str = "run `make setup` (or `python3 scripts/setup.py libtorch`) and rebuild; \
                       to use the project's own libtorch, unset LIBTORCH";
    let with_fix = |e: anyhow::Error| anyhow::anyhow!("{e:#}\n  fix: {FIX}");
    // torch-sys ignores LIBTORCH when LIBTORCH_USE_PYTORCH is set; so does doctor.
    let use_pytorch = std::env::var_os("LIBTORCH_USE_PYTORCH").is_some();
    if let (Ok(value), false) = (std::env::var("LIBTORCH"), use_pytorch) {
        check_libtorch_setting(&value).map_err(|e| with_fix(e.into()))?;
    }
    let libtorch_dir = loaded_libtorch_dir().map_err(|e| with_fix(e.into()))?;
    let libtorch_version = libtorch_version(&libtorch_dir).map_err(|e| with_fix(e.into()))?;
    if libtorch_version != REQUIRED_LIBTORCH {
        return Err(with_fix(anyhow::anyhow!(
            "loaded libtorch {libtorch_version} from {}, but tch {TCH_VERSION} needs {REQUIRED_LIBTORCH}",
            libtorch_dir.display()
        )));
    }
    let check_result = tensor_check().context("a 2x2 matmul on libtorch failed")?;
    if check_result != 134.0 {
        bail!("libtorch computed {check_result} for a 2x2 matmul whose sum is 134");
    }
    let cpu = CpuFeatures::detect();
    Ok(Report {
        libtorch_dir,
        libtorch_version,
        intra_op_threads: runtime::intra_op_threads(),
        inter_op_threads: tch::get_num_interop_threads(),
        decode_threads: rayon::current_num_threads(),
        allocator: runtime::allocator(),
        allocator_faults: runtime::page_faults_of_repeated_tensors(ALLOCATOR_PROBE_TENSORS),
        cpu_model: runtime::cpu_model(),
        cpu,
        bf16_limited: cpu.native_bf16() && !runtime::native_bf16_here(),
        cuda_available: tch::Cuda::is_available(),
        cuda_devices: tch::Cuda::device_count(),
        mps_available: tch::utils::has_mps(),
        gpus: runtime::gpu_descriptions(),
        check_result,
    })
}

/// The memory page size in bytes (4096 where it cannot be read).
fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096).max(1)
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "libtorch version   {}", self.libtorch_version)?;
        writeln!(f, "libtorch path      {}", self.libtorch_dir.display())?;
        writeln!(f, "tch version        {TCH_VERSION}")?;
        writeln!(
            f,
            "threads            libtorch {} intra-op per trainer, {} inter-op; 1 input thread \
             per run (augments the next batches, 1 libtorch thread); {} decoding",
            self.intra_op_threads, self.inter_op_threads, self.decode_threads
        )?;
        writeln!(f, "memory allocator   {}", self.allocator)?;
        if let Some(faults) = self.allocator_faults {
            writeln!(
                f,
                "                   a 64 MiB tensor made and freed {ALLOCATOR_PROBE_TENSORS} \
                 times: {faults} pages faulted in ({} per fresh tensor)",
                (64 << 20) / page_size()
            )?;
        }
        writeln!(f, "cpu                {}", self.cpu_model)?;
        writeln!(
            f,
            "cpu features       avx2 {}, avx512 {}, avx512-bf16 {}, amx-bf16 {}",
            yes_no(self.cpu.avx2),
            yes_no(self.cpu.avx512f),
            yes_no(self.cpu.avx512_bf16),
            yes_no(self.cpu.amx_bf16)
        )?;
        writeln!(
            f,
            "bf16 kernels       {}",
            if self.bf16_limited {
                "limited by ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA (an older CPU's \
                 instructions emulated): `precision: auto` stays fp32"
            } else if self.cpu.native_bf16() {
                "native: `precision: auto` runs the frozen backbone in bf16"
            } else {
                "emulated: `precision: auto` stays fp32 (bf16 gives no speed-up)"
            }
        )?;
        writeln!(
            f,
            "libtorch build     {}",
            runtime::describe_build(
                runtime::LIBTORCH_VARIANT,
                if self.cuda_available {
                    self.cuda_devices
                } else {
                    0
                },
                self.mps_available
            )
        )?;
        for gpu in &self.gpus {
            writeln!(f, "gpu                {gpu}")?;
        }
        write!(
            f,
            "tensor check       [[1,2],[3,4]] @ [[5,6],[7,8]] sums to {} (ok)",
            self.check_result
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_a_libtorch_setting_that_is_not_a_libtorch() {
        let dir = std::env::temp_dir().join(format!("tlcap-not-libtorch-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        let err = check_libtorch_setting(dir.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("no lib/libtorch_cpu.so"), "{err}");
        std::fs::write(dir.join("lib/libtorch_cpu.so"), b"").unwrap();
        std::fs::write(dir.join("build-version"), "2.1.0\n").unwrap();
        let err = check_libtorch_setting(dir.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("needs 2.13.0"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn loaded_libtorch_is_the_required_version() {
        let dir = loaded_libtorch_dir().unwrap();
        assert_eq!(libtorch_version(&dir).unwrap(), REQUIRED_LIBTORCH);
        assert_eq!(tensor_check().unwrap(), 134.0);
    }
}
