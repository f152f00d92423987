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


def test_threestudio_root_lookup_and_missing_threestudio(tmp_path):
    import os

    fake = tmp_path / "ts"
    (fake / "threestudio").mkdir(parents=True)
    (fake / "threestudio" / "__init__.py").write_text("")
    env = {k: v for k, v in os.environ.items() if k != "THREESTUDIO_ROOT"}
    r = run(f"""
        import importlib.util
        from threestudio_dreambooth3d.cpu import compat as cpu_compat
        assert cpu_compat.find_threestudio_root({str(fake)!r}) == __import__("pathlib").Path({str(fake)!r}).resolve()
        assert cpu_compat.find_threestudio_root({str(tmp_path)!r}) is None or importlib.util.find_spec("threestudio")
        if importlib.util.find_spec("threestudio") is None:
            try:
                cpu_compat.enable()
            except ImportError as e:
                assert "THREESTUDIO_ROOT" in str(e), e
            else:
                raise SystemExit("no error")
        print("ok")
    """, env=env)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
