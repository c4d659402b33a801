# tests/sdpa_compare.py — our attention against PyTorch's scaled_dot_product_attention, on the cases
# that build/gpu_attention_dump wrote (see its header for the file layout):
#
#   ./build/gpu_attention_dump DIR && python3 tests/sdpa_compare.py DIR
#
# A peer check for GPU machines that have PyTorch (tests/gpu_check.sh runs it when it can); the library
# never needs Python or PyTorch. For each case: SDPA in bf16 on the GPU (PyTorch's default backend)
# with the same q, k, v and dout, and a float64 reference. A case passes when ours is within
# ||x - ref|| / ||ref|| < 1e-2 of SDPA for out, dQ, dK and dV, and lse of the float64 reference (SDPA does
# not return it); the inputs are standard normal, and ||ref|| counts as at least 1e-3 per element. The float64 column shows how far each of the two bf16 implementations is from exact.
# Ends with "sdpa_compare: N passed, N failed"; exit status 1 when a case fails or none was found.
import glob, os, struct, sys

import torch
import torch.nn.functional as F

TOL = 1e-2


def load(path):
    raw = open(path, "rb").read()
    if raw[:8] != b"MTATTN1\n":
        raise ValueError(f"{path}: not a case file (magic {raw[:8]!r})")
    B, T, Hkv, G, D, causal = struct.unpack("<6i", raw[8:32])
    H, pos = Hkv * G, 32

    def take(n, dtype):
        nonlocal pos
        nbytes = n * (2 if dtype == torch.bfloat16 else 4)
        if pos + nbytes > len(raw):
            raise ValueError(f"{path}: truncated at byte {pos} (wants {nbytes} more)")
        t = torch.frombuffer(bytearray(raw[pos:pos + nbytes]), dtype=dtype)
        pos += nbytes
        return t

    c = dict(B=B, T=T, Hkv=Hkv, G=G, D=D, causal=bool(causal))
    c["qkv"] = take(B * T * Hkv * (G + 2) * D, torch.bfloat16).view(B, T, Hkv, G + 2, D)
    c["dout"] = take(B * T * H * D, torch.bfloat16).view(B, T, H, D)
    c["out"] = take(B * T * H * D, torch.bfloat16).view(B, T, H, D)
    c["lse"] = take(B * H * T, torch.float32).view(B, H, T)
    c["dqkv"] = take(B * T * Hkv * (G + 2) * D, torch.bfloat16).view(B, T, Hkv, G + 2, D)
    if pos != len(raw):
        raise ValueError(f"{path}: {len(raw) - pos} bytes after the last array")
    return c


def split(qkv, G):
    """(B,T,Hkv,G+2,D) -> q (B,H,T,D) with head h = g G + j, k and v (B,Hkv,T,D)"""
    B, T, Hkv, _, D = qkv.shape
    q = qkv[:, :, :, :G, :].reshape(B, T, Hkv * G, D).permute(0, 2, 1, 3)
    return q, qkv[:, :, :, G, :].permute(0, 2, 1, 3), qkv[:, :, :, G + 1, :].permute(0, 2, 1, 3)


def attention(q, k, v, G, causal, exact):
    """out and, for the float64 path, lse; k and v shared by the G heads of a group"""
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    if not exact:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal), None
    s = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    if causal:
        T = q.shape[2]
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(s, dim=-1) @ v, torch.logsumexp(s, dim=-1)


def grads(c, dtype, exact, dev):
    q, k, v = (t.to(dev, dtype).detach().requires_grad_(True) for t in split(c["qkv"], c["G"]))
    out, lse = attention(q, k, v, c["G"], c["causal"], exact)
    dout = c["dout"].to(dev, dtype).permute(0, 2, 1, 3)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    return dict(out=out.detach(), lse=lse.detach() if lse is not None else None, dq=dq, dk=dk, dv=dv)


def rel(x, ref):
    """||x - ref|| / ||ref||, the denominator at least 1e-3 per element (rms): where the exact value is
    0 (dQ and dK at T = 1, a softmax over one key) both implementations give rounding noise"""
    x, ref = x.double().flatten(), ref.double().flatten()
    if not torch.isfinite(x).all():
        return float("nan")
    den = max(ref.norm().item(), 1e-3 * max(ref.numel(), 1) ** 0.5)
    return (x - ref).norm().item() / den


def main():
    args = [a for a in sys.argv[1:] if a != "--cpu"]  # --cpu: PyTorch on the CPU (to try the script itself)
    folder = args[0] if args else "build/attention-cases"
    files = sorted(glob.glob(os.path.join(folder, "case_*.bin")))
    if not files:
        print(f"sdpa_compare: no case files in {folder} (run build/gpu_attention_dump {folder} first)")
        print("sdpa_compare: 0 passed, 1 failed")
        return 1
    if "--cpu" not in sys.argv and not torch.cuda.is_available():
        print("sdpa_compare: PyTorch sees no GPU")
        print("sdpa_compare: 0 passed, 1 failed")
        return 1
    dev = torch.device("cpu" if "--cpu" in sys.argv else "cuda")
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "CPU"
    passed = failed = 0
    print(f"torch {torch.__version__}, {name}; rel. error ours vs SDPA bf16 "
          f"[ours vs float64 | SDPA vs float64]")
    for path in files:
        try:
            c = load(path)
        except ValueError as e:
            print(f"  FAIL {e}")
            failed += 1
            continue
        q, k, v = split(c["qkv"], c["G"])
        ours = dict(out=c["out"].permute(0, 2, 1, 3), lse=c["lse"], dq=c["dqkv"][:, :, :, :c["G"], :]
                    .reshape(c["B"], c["T"], -1, c["D"]).permute(0, 2, 1, 3),
                    dk=c["dqkv"][:, :, :, c["G"], :].permute(0, 2, 1, 3),
                    dv=c["dqkv"][:, :, :, c["G"] + 1, :].permute(0, 2, 1, 3))
        sdpa = grads(c, torch.bfloat16, False, dev)
        exact = grads(c, torch.float64, True, dev)
        cols, ok = [], True
        for name in ("out", "dq", "dk", "dv"):
            e = rel(ours[name].to(dev), sdpa[name])
            ok = ok and e < TOL
            cols.append(f"{name} {e:.1e} [{rel(ours[name].to(dev), exact[name]):.1e} | {rel(sdpa[name], exact[name]):.1e}]")
        e = rel(ours["lse"].to(dev), exact["lse"])
        ok = ok and e < TOL
        cols.append(f"lse {e:.1e} (vs float64)")
        tag = f"D={c['D']} T={c['T']} causal={int(c['causal'])} G={c['G']}"
        print(f"  {'ok  ' if ok else 'FAIL'} {tag:28s} " + "  ".join(cols))
        passed, failed = passed + ok, failed + (not ok)
    print(f"sdpa_compare: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
