//! What this machine and this libtorch offer, and the choices that follow from it:
//! CPU features, the libtorch variant, devices, the number format of the frozen part,
//! thread counts and the memory allocator. Read by `doctor`, `train`, `predict` and
//! `bench` alike.

use anyhow::{anyhow, bail};
use tch::{Device, Kind};

use crate::config::Precision;

/// `cpu` or `cuda`: the libtorch variant this binary was linked against (`build.rs`).
pub const LIBTORCH_VARIANT: &str = env!("TLCAP_LIBTORCH_VARIANT");

/// CPU features that decide which kernels libtorch can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuFeatures {
    pub avx2: bool,
    pub avx512f: bool,
    pub avx512_bf16: bool,
    pub amx_bf16: bool,
}

impl CpuFeatures {
    /// Reads the features from `/proc/cpuinfo` flags (what the kernel enabled).
    pub fn detect() -> Self {
        let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self::from_cpuinfo(&flags)
    }

    /// Parses the `flags` line of a `/proc/cpuinfo` text.
    pub fn from_cpuinfo(cpuinfo: &str) -> Self {
        let flags: Vec<&str> = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, f)| f.split_whitespace().collect())
            .unwrap_or_default();
        let has = |f: &str| flags.contains(&f);
        CpuFeatures {
            avx2: has("avx2"),
            avx512f: has("avx512f"),
            avx512_bf16: has("avx512_bf16"),
            amx_bf16: has("amx_bf16") && has("amx_tile"),
        }
    }

    /// True when bfloat16 matrix kernels run natively (AVX512-BF16 or AMX).
    pub fn native_bf16(&self) -> bool {
        self.avx512_bf16 || self.amx_bf16
    }
}

/// The CPU's model as `/proc/cpuinfo` names it, with its family and model numbers (a
/// virtual machine may show only "AMD EPYC") and the logical CPU count, e.g. `AMD EPYC
/// (family 25, model 1), 2 CPUs`; "unknown CPU" where nothing is readable.
pub fn cpu_model() -> String {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpu_model_from(&text)
}

/// [`cpu_model`] from a `/proc/cpuinfo` text.
pub fn cpu_model_from(cpuinfo: &str) -> String {
    let field = |key: &str| {
        cpuinfo
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let cpus = cpuinfo
        .lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(k, _)| k.trim() == "processor")
        })
        .count();
    let name = field("model name").unwrap_or_else(|| "unknown CPU".into());
    let numbers = match (field("cpu family"), field("model")) {
        (Some(family), Some(model)) => format!(" (family {family}, model {model})"),
        _ => String::new(),
    };
    let count = if cpus > 0 {
        format!(", {cpus} CPU{}", if cpus == 1 { "" } else { "s" })
    } else {
        String::new()
    };
    format!("{name}{numbers}{count}")
}

/// Whether kernel limits set in the environment keep libtorch off its bfloat16
/// instructions although the CPU has them: `ATEN_CPU_CAPABILITY` below `avx512` or
/// `ONEDNN_MAX_CPU_ISA` below `AVX512_CORE_BF16` (how an AVX2-only CPU is measured
/// on a newer one).
pub fn bf16_limited_by(aten_capability: Option<&str>, onednn_max_isa: Option<&str>) -> bool {
    let aten = aten_capability.map(str::to_lowercase);
    let onednn = onednn_max_isa.map(str::to_uppercase);
    matches!(aten.as_deref(), Some("default" | "avx2"))
        || onednn.as_deref().is_some_and(|isa| {
            matches!(
                isa,
                "SSE41"
                    | "AVX"
                    | "AVX2"
                    | "AVX2_VNNI"
                    | "AVX2_VNNI_2"
                    | "AVX512_CORE"
                    | "AVX512_CORE_VNNI"
            )
        })
}

/// True when this process's CPU kernels run bfloat16 natively: the CPU has the
/// instructions and the environment does not limit libtorch below them.
pub fn native_bf16_here() -> bool {
    let var = |name: &str| std::env::var(name).ok();
    CpuFeatures::detect().native_bf16()
        && !bf16_limited_by(
            var("ATEN_CPU_CAPABILITY").as_deref(),
            var("ONEDNN_MAX_CPU_ISA").as_deref(),
        )
}

/// CUDA devices libtorch sees (0 on a CPU build, or a CUDA build with no GPU).
pub fn cuda_devices() -> i64 {
    if tch::Cuda::is_available() {
        tch::Cuda::device_count()
    } else {
        0
    }
}

/// One line per NVIDIA GPU: name, memory and driver, as `nvidia-smi` reports them
/// (libtorch has no such query); empty when there is no `nvidia-smi`.
pub fn gpu_descriptions() -> Vec<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,name,memory.total,driver_version",
            "--format=csv,noheader",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split(',').map(str::trim).collect();
                match f.as_slice() {
                    [i, name, mem, driver] => format!("{i}: {name}, {mem}, driver {driver}"),
                    _ => l.trim().to_string(),
                }
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Picks the device an experiment asks for: `auto` (CUDA when tch sees it, else the
/// CPU), `cpu`, `cuda` (device 0), `cuda:N` or `mps`; a one-line error if the device is
/// asked for and absent (a CPU build, or a CUDA build on a machine without a GPU).
pub fn select_device(spec: &str) -> anyhow::Result<Device> {
    let cuda = |n: usize| {
        if (n as i64) < cuda_devices() {
            Ok(Device::Cuda(n))
        } else {
            Err(anyhow!(
                "device `{spec}` asked for, but this {} libtorch sees {} CUDA device(s); use \
                 `device: cpu` or `auto`",
                LIBTORCH_VARIANT.to_uppercase(),
                cuda_devices()
            ))
        }
    };
    match spec {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        "mps" if tch::utils::has_mps() => Ok(Device::Mps),
        "mps" => bail!(
            "device `mps` asked for, but this libtorch has no MPS backend (macOS only); use \
             `device: cpu` or `auto`"
        ),
        s => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => cuda(n),
            None => bail!("unknown device `{s}`: use auto, cpu, cuda, cuda:N or mps"),
        },
    }
}

/// Sets libtorch up for training on `device`: on CUDA, cuDNN picks the fastest
/// convolution algorithms for the (fixed) batch shapes.
pub fn prepare_device(device: Device) {
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
}

/// Describes a device for people: `cpu`, `cuda:0`, `mps`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(n) => format!("cuda:{n}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
        Device::Cpu => "cpu".into(),
    }
}

/// The number format `precision` means on `device` for the frozen part of the
/// backbone: for `auto`, bfloat16 on a GPU and on a CPU with native bfloat16
/// arithmetic, float32 otherwise. Trainable layers always stay float32.
pub fn resolve_precision(precision: Precision, device: Device) -> Kind {
    match precision {
        Precision::Fp32 => Kind::Float,
        Precision::Bf16 => Kind::BFloat16,
        Precision::Auto => {
            let native = match device {
                Device::Cpu => native_bf16_here(),
                Device::Cuda(_) => true,
                _ => false,
            };
            if native {
                Kind::BFloat16
            } else {
                Kind::Float
            }
        }
    }
}

/// The `precision:` value a resolved number format stands for (`bf16` or `fp32`).
pub fn precision_of(kind: Kind) -> Precision {
    if kind == Kind::BFloat16 {
        Precision::Bf16
    } else {
        Precision::Fp32
    }
}

/// libtorch's intra-op threads for trainer threads: its default (one per physical
/// core), read once before any input thread lowers its own count to 1.
pub fn intra_op_threads() -> i32 {
    static THREADS: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    *THREADS.get_or_init(tch::get_num_threads)
}

/// How the libtorch build and its devices read in `doctor`: "CPU build", or
/// "CUDA build, 0 devices (...)".
pub fn describe_build(variant: &str, cuda_devices: i64, mps: bool) -> String {
    match (variant, cuda_devices) {
        ("cuda", 0) => "CUDA build, 0 devices (`device: auto` trains on the CPU; \
                        `device: cuda` is an error here)"
            .to_string(),
        ("cuda", n) => format!("CUDA build, {n} device(s): `device: auto` trains on cuda:0"),
        _ if mps => "CPU build with MPS (`device: mps` trains on the Apple GPU)".to_string(),
        (_, n) if n > 0 => format!("CPU build, yet {n} CUDA device(s) seen"),
        _ => "CPU build (`TLCAP_LIBTORCH=cuda make setup` builds the CUDA one)".to_string(),
    }
}

/// How the process's memory allocator was set up ([`tune_allocator`]), for `doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allocator {
    /// glibc malloc keeps freed memory for the next batch: one arena, no `mmap` per
    /// large block, no trimming (the default on Linux with glibc).
    Tuned,
    /// Left as the C library set it, and why: `TLCAP_ALLOCATOR=system`, a `MALLOC_*`
    /// variable or `GLIBC_TUNABLES` set by the user, not glibc, or not tuned yet.
    System(String),
}

/// Why [`tune_allocator`] leaves the allocator alone, if it does: from the
/// environment's variables (name, value).
pub fn allocator_left_alone<'a>(
    vars: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<String> {
    for (name, value) in vars {
        if name == "TLCAP_ALLOCATOR" && value == "system" {
            return Some("TLCAP_ALLOCATOR=system".into());
        }
        if name.starts_with("MALLOC_") || (name == "GLIBC_TUNABLES" && value.contains("malloc")) {
            return Some(format!("{name} is set"));
        }
    }
    None
}

/// Sets glibc's malloc up for tensors, once, before any thread starts. libtorch's CPU
/// tensors come from malloc; by default glibc serves every block over 32 MiB (a batch of
/// activations) with its own `mmap` and gives it back on free, so each training step
/// faults every page in again: a whole-network MobileNetV2 step spent ~15% of its CPU
/// time in the kernel and its plain path ran 2.4x slower (docs/speed.md). One arena, no
/// `mmap` and no trimming keep the freed blocks for the next step. Left alone under
/// `TLCAP_ALLOCATOR=system` or when the user set `MALLOC_*` or `GLIBC_TUNABLES` themselves.
pub fn tune_allocator() -> Allocator {
    ALLOCATOR
        .get_or_init(|| {
            let vars: Vec<(String, String)> = std::env::vars().collect();
            match allocator_left_alone(vars.iter().map(|(n, v)| (n.as_str(), v.as_str()))) {
                Some(why) => Allocator::System(why),
                None => set_glibc_malloc(),
            }
        })
        .clone()
}

static ALLOCATOR: std::sync::OnceLock<Allocator> = std::sync::OnceLock::new();

/// The allocator this process runs with: [`Allocator::Tuned`] once [`tune_allocator`]
/// tuned it (the binary does at start; a library user may not).
pub fn allocator() -> Allocator {
    ALLOCATOR
        .get()
        .cloned()
        .unwrap_or_else(|| Allocator::System("not tuned by this process".into()))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_glibc_malloc() -> Allocator {
    // SAFETY: mallopt only changes malloc's parameters; called before other threads
    // allocate (the first statement of `main`), and each call is checked.
    let ok = unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1) == 1
            && libc::mallopt(libc::M_MMAP_MAX, 0) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
            && libc::mallopt(libc::M_TOP_PAD, 64 << 20) == 1
    };
    if ok {
        Allocator::Tuned
    } else {
        Allocator::System("glibc refused a mallopt setting".into())
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_glibc_malloc() -> Allocator {
    Allocator::System("not glibc".into())
}

/// Pages the process faulted in while libtorch made, filled and freed a 64 MiB tensor
/// `times` times: a tuned allocator faults in the first tensor or two (16,384 pages of
/// 4 KiB each) and reuses them; glibc's defaults give every tensor back and fault in
/// `times` of them. `None` off Linux.
pub fn page_faults_of_repeated_tensors(times: usize) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let faults = || {
            let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
            // SAFETY: getrusage writes one rusage into the buffer it is given.
            let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
            // SAFETY: zero-initialised, and filled in when rc is 0.
            (rc == 0).then(|| unsafe { usage.assume_init() }.ru_minflt as u64)
        };
        let before = faults()?;
        for _ in 0..times {
            let t = tch::Tensor::ones([16 << 20], (Kind::Float, Device::Cpu));
            drop(t);
        }
        Some(faults()?.saturating_sub(before))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = times;
        None
    }
}

impl std::fmt::Display for Allocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Allocator::Tuned => f.write_str(
                "glibc malloc tuned for tensors: one arena, freed memory kept for the next \
                 batch (TLCAP_ALLOCATOR=system leaves it as it was)",
            ),
            Allocator::System(why) => write!(f, "the C library's, as it was set ({why})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_cpu_model() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n\
                    model name\t: AMD EPYC\nflags\t: avx2\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n";
        assert_eq!(
            cpu_model_from(text),
            "AMD EPYC (family 25, model 1), 2 CPUs"
        );
        assert_eq!(cpu_model_from(""), "unknown CPU");
    }

    #[test]
    fn parses_cpuinfo_flags() {
        let text = "processor: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n";
        let cpu = CpuFeatures::from_cpuinfo(text);
        assert!(cpu.avx2 && cpu.avx512f && cpu.avx512_bf16 && cpu.amx_bf16);
        let plain = CpuFeatures::from_cpuinfo("flags : fpu sse2 avx2\n");
        assert!(plain.avx2 && !plain.avx512f && !plain.native_bf16());
        // Limiting the kernels as an AVX2-only CPU is measured on a newer one.
        assert!(bf16_limited_by(Some("avx2"), None));
        assert!(bf16_limited_by(None, Some("avx2")));
        assert!(bf16_limited_by(None, Some("AVX512_CORE")));
        assert!(!bf16_limited_by(Some("avx512"), Some("AVX512_CORE_BF16")));
        assert!(!bf16_limited_by(None, None));
    }

    #[test]
    fn describes_each_build_and_device_count() {
        assert!(describe_build("cuda", 0, false).starts_with("CUDA build, 0 devices"));
        assert!(describe_build("cuda", 2, false).starts_with("CUDA build, 2 device(s)"));
        assert!(describe_build("cpu", 0, false).starts_with("CPU build"));
        assert!(describe_build("cpu", 0, true).contains("device: mps"));
    }

    #[test]
    fn devices_that_are_absent_are_one_line_errors() {
        assert_eq!(select_device("cpu").unwrap(), Device::Cpu);
        if cuda_devices() == 0 {
            assert_eq!(select_device("auto").unwrap(), Device::Cpu);
            let err = select_device("cuda").unwrap_err().to_string();
            assert!(err.contains("sees 0 CUDA device(s)"), "{err}");
            assert!(!err.contains('\n'), "{err}");
            assert!(select_device("cuda:3").is_err());
        }
        if !tch::utils::has_mps() {
            let err = select_device("mps").unwrap_err().to_string();
            assert!(err.contains("no MPS backend"), "{err}");
        }
        let err = select_device("tpu").unwrap_err().to_string();
        assert!(err.contains("use auto, cpu, cuda, cuda:N or mps"), "{err}");
    }

    #[test]
    fn the_allocator_is_left_alone_when_the_user_chose() {
        assert_eq!(
            allocator_left_alone([("PATH", "/bin"), ("HOME", "/root")]),
            None
        );
        assert_eq!(allocator_left_alone([("TLCAP_ALLOCATOR", "tuned")]), None);
        assert_eq!(
            allocator_left_alone([("TLCAP_ALLOCATOR", "system")]).as_deref(),
            Some("TLCAP_ALLOCATOR=system")
        );
        assert_eq!(
            allocator_left_alone([("MALLOC_ARENA_MAX", "4")]).as_deref(),
            Some("MALLOC_ARENA_MAX is set")
        );
        assert!(allocator_left_alone([("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")]).is_some());
        assert_eq!(
            allocator_left_alone([("GLIBC_TUNABLES", "glibc.rtld.nns=2")]),
            None
        );
    }

    #[test]
    fn precision_auto_follows_the_device() {
        assert_eq!(
            resolve_precision(Precision::Fp32, Device::Cuda(0)),
            Kind::Float
        );
        assert_eq!(
            resolve_precision(Precision::Auto, Device::Cuda(0)),
            Kind::BFloat16
        );
        let cpu = resolve_precision(Precision::Auto, Device::Cpu);
        assert_eq!(cpu == Kind::BFloat16, native_bf16_here());
    }
}
