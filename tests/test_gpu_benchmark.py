"""benchmarks/gpu.py runs here as it would on the GPU machine (which has torch but not Ray, MLflow
or the project installed): a smoke run of three cases on the CPU, tiny presets, from a fresh
interpreter whose only path to genray is the script's own."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_benchmark_runs_from_components_alone_and_writes_its_figures(tmp_path):
    out = tmp_path / "gpu.json"
    # -S: no site-packages' .pth, so no installed genray; torch is found through PYTHONPATH
    import torch

    site = str(Path(torch.__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-S", str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--quick",
                           "--steps", "1", "--warmup", "0", "--families", "vae,gpt,diffusion", "--out", str(out)],
                          capture_output=True, text=True, env={"PYTHONPATH": site, "PATH": "/usr/bin:/bin"},
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert set(report["cases"]) == {"vae", "gpt", "diffusion"} and report["bf16_autocast"] is False
    gpt, diffusion = report["cases"]["gpt"], report["cases"]["diffusion"]
    assert gpt["train_tokens_per_s"] > 0 and gpt["step_tflop"] > 0 and diffusion["step_tflop"] > 0
    assert "mfu" not in gpt  # no peak known for a CPU
    assert report["cases"]["vae"]["samples_per_s"] > 0 and "unclip" in report["not_timed"]


def test_an_unknown_case_exits_2_naming_the_cases():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--families", "vae,nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--families nope: unknown; cases: vae," in proc.stderr
