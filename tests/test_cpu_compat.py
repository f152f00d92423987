"""cpu.compat without threestudio: stand-ins only for missing CUDA extensions (one warning for the\nslow tinycudann), clear errors, root lookup.

Stand-ins change sys.modules, so each check runs in a fresh interpreter.
"""
import subprocess
import sys
import textwrap

import pytest


def run(code: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=120)


def test_stand_ins_replace_only_missing_modules_and_explain_themselves():
    r = run("""
        import sys, types, importlib.util, warnings
        if importlib.util.find_spec("tinycudann") is not None:
            raise SystemExit(print("real tinycudann"))
        real = types.ModuleType("envlight"); sys.modules["envlight"] = real   # pretend it is installed
        from threestudio_dreambooth3d.cpu import compat as cpu_compat
        from threestudio_dreambooth3d.cpu import tinycudann as pure_torch_tcnn
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            installed = cpu_compat.install_stand_ins()
            assert cpu_compat.install_stand_ins() == []   # idempotent
        slow = [w for w in caught if issubclass(w.category, cpu_compat.SlowFallbackWarning)]
        assert len(slow) == 1 and "slower" in str(slow[0].message), [str(w.message) for w in caught]
        assert "envlight" not in installed and sys.modules["envlight"] is real, installed
        assert {"tinycudann", "nvdiffrast", "nvdiffrast.torch"} <= set(installed), installed
        import tinycudann, nvdiffrast.torch as dr
        # the real configs' encodings work through the pure-torch tinycudann
        assert tinycudann.Encoding is pure_torch_tcnn.Encoding
        tinycudann.free_temporary_memory()          # threestudio's cleanup() calls it
        assert importlib.util.find_spec("tinycudann") is not None
        try:
            dr.RasterizeCudaContext(device="cpu")
        except RuntimeError as e:
            assert "cpu.nvdiffrast" in str(e), e
        else:
            raise SystemExit("no error")
        try:
            dr.texture
        except AttributeError as e:
            assert "nvdiffrast" in str(e) and "stand-in" in str(e), e
        else:
            raise SystemExit("no error")
        print("ok")
    """)
    if r.stdout.strip() == "real tinycudann":
        pytest.skip("a real tinycudann is installed: no stand-in to check")
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


def test_a_wrong_threestudio_root_is_named_not_skipped(tmp_path):
    """enable() finds threestudio with the one locator: a THREESTUDIO_ROOT that is not a checkout
    is an error naming it, even when another threestudio is importable."""
    import os

    fake = tmp_path / "ts"
    (fake / "threestudio").mkdir(parents=True)
    (fake / "threestudio" / "__init__.py").write_text("")
    env = {**os.environ, "THREESTUDIO_ROOT": str(tmp_path / "not-a-checkout")}
    r = run(f"""
        from threestudio_dreambooth3d.cpu import compat as cpu_compat
        from threestudio_dreambooth3d.errors import ThreestudioNotFoundError
        try:
            cpu_compat.enable()
        except ThreestudioNotFoundError as e:
            assert "THREESTUDIO_ROOT=" in str(e) and "not-a-checkout is not a threestudio checkout" in str(e), e
            assert isinstance(e, ImportError)
        else:
            raise SystemExit("no error")
        try:
            cpu_compat.enable({str(tmp_path)!r})
        except ThreestudioNotFoundError as e:
            assert "--threestudio-root=" in str(e), e
        else:
            raise SystemExit("no error for a folder without threestudio")
        print("ok")
    """, env=env)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
