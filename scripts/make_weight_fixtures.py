#!/usr/bin/env python3
"""Writes the small weight-file fixtures in tests/fixtures/weights/ (committed).

torch's own serialisation code is plain Python `pickle` with a persistent_id hook;
this script reproduces it without torch: stand-in `torch` / `torch._utils` modules
give the globals the same names, so the bytes are what torch.save writes:
- legacy_mixed.pth: pre-1.6 format (magic, protocol 1001, sys_info, state_dict,
  storage keys, then int64 count + raw little-endian data per storage);
- zip_mixed.pth: the zip format (<name>/data.pkl, <name>/data/<key>, byteorder);
  both with float32, float16 and bfloat16 tensors, a view with an offset, a
  non-contiguous (transposed) view, and an int64 num_batches_tracked;
- evil_*.pth: pickles that call os.system / builtins.eval / subprocess.Popen, which
  would create /tmp/tlcap-pickle-marker-* if anything executed them, plus
  legacy_lying_size.pth whose storage claims more bytes than the file has.
Run: python3 scripts/make_weight_fixtures.py
"""
import collections, io, os, pickle, struct, sys, types, zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "weights"

torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")
sys.modules["torch"], sys.modules["torch._utils"] = torch, utils


def _rebuild_tensor_v2(*a):
    raise RuntimeError("never called")


_rebuild_tensor_v2.__module__ = "torch._utils"
utils._rebuild_tensor_v2 = _rebuild_tensor_v2
for name, size, fmt in [("FloatStorage", 4, "<f"), ("HalfStorage", 2, "<e"),
                        ("BFloat16Storage", 2, None), ("LongStorage", 8, "<q")]:
    cls = type(name, (), {"__module__": "torch", "element_size": size, "fmt": fmt})
    setattr(torch, name, cls)


def bf16(x):
    return struct.unpack("<I", struct.pack("<f", x))[0] >> 16


class Storage:
    def __init__(self, key, kind, values):
        self.key, self.kind, self.values = key, kind, values

    def raw(self):
        if self.kind is torch.BFloat16Storage:
            return b"".join(struct.pack("<H", bf16(v)) for v in self.values)
        return b"".join(struct.pack(self.kind.fmt, v) for v in self.values)


class T:
    """A tensor: storage, offset, size, stride (in elements)."""

    def __init__(self, storage, offset, size, stride):
        self.s, self.o, self.size, self.stride = storage, offset, size, stride

    def __reduce_ex__(self, proto):
        return (_rebuild_tensor_v2,
                (self.s, self.o, tuple(self.size), tuple(self.stride), False,
                 collections.OrderedDict()))


def state():
    w = Storage("0", torch.FloatStorage, [float(i) / 8 for i in range(12)])
    h = Storage("1", torch.HalfStorage, [0.5, -1.25, 3.0, 1024.0])
    b = Storage("2", torch.BFloat16Storage, [1.5, -2.0, 0.15625])
    n = Storage("3", torch.LongStorage, [7])
    sd = collections.OrderedDict()
    sd["conv.weight"] = T(w, 0, [2, 3, 1, 2], [6, 2, 2, 1])   # all 12 values
    sd["conv.bias"] = T(w, 10, [2], [1])                      # view at offset 10
    sd["fc.weight_t"] = T(w, 0, [3, 2], [1, 3])               # transposed view
    sd["half.weight"] = T(h, 0, [2, 2], [2, 1])
    sd["bf16.bias"] = T(b, 0, [3], [1])
    sd["bn.num_batches_tracked"] = T(n, 0, [], [])
    return sd


def pickle_with_storages(obj, legacy):
    storages = collections.OrderedDict()

    def persistent_id(o):
        if isinstance(o, Storage):
            storages[o.key] = o
            pid = ("storage", o.kind, o.key, "cpu", len(o.values))
            return pid + (None,) if legacy else pid
        return None

    buf = io.BytesIO()
    # fix_imports=False: globals keep their Python 3 names (builtins, subprocess).
    p = pickle.Pickler(buf, protocol=2, fix_imports=False)
    p.persistent_id = persistent_id
    p.dump(obj)
    return buf.getvalue(), storages


def legacy_file(sd, lie=False):
    out = io.BytesIO()
    for v in (0x1950A86A20F9469CFC6C, 1001,
              {"protocol_version": 1001, "little_endian": True,
               "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(v, out, protocol=2)
    body, storages = pickle_with_storages(sd, legacy=True)
    out.write(body)
    pickle.dump(list(storages.keys()), out, protocol=2)
    for i, (key, s) in enumerate(storages.items()):
        count = len(s.values) * (1000 if lie and i == 0 else 1)
        out.write(struct.pack("<q", count))
        out.write(s.raw())
    return out.getvalue()


def zip_file(sd, name="zip_mixed"):
    body, storages = pickle_with_storages(sd, legacy=False)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{name}/data.pkl", body)
        z.writestr(f"{name}/byteorder", "little")
        for key, s in storages.items():
            z.writestr(f"{name}/data/{key}", s.raw())
        z.writestr(f"{name}/version", "3\n")
    return buf.getvalue()


class Evil:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "legacy_mixed.pth").write_bytes(legacy_file(state()))
    (OUT / "zip_mixed.pth").write_bytes(zip_file(state()))
    (OUT / "legacy_lying_size.pth").write_bytes(legacy_file(state(), lie=True))
    import builtins, subprocess
    evil = {
        "os_system": Evil(os.system, ("touch /tmp/tlcap-pickle-marker-os_system",)),
        "builtins_eval": Evil(builtins.eval,
                              ("open('/tmp/tlcap-pickle-marker-builtins_eval','w')",)),
        "subprocess_popen": Evil(subprocess.Popen,
                                 (["touch", "/tmp/tlcap-pickle-marker-subprocess_popen"],)),
    }
    for name, payload in evil.items():
        # A state_dict whose first value is the payload, in both containers.
        sd = collections.OrderedDict([("conv.weight", payload)])
        (OUT / f"evil_{name}.pth").write_bytes(legacy_file(sd))
        (OUT / f"evil_{name}_zip.pth").write_bytes(zip_file(sd, f"evil_{name}"))
    for f in sorted(OUT.iterdir()):
        print(f"{f.name:32} {f.stat().st_size:6} bytes")


if __name__ == "__main__":
    main()
