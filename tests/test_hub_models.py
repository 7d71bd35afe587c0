"""Models named as Hugging Face users name them: `org/name[@revision]` from a real hub cache
layout (refs + snapshots in a temporary HF_HOME), and one-line errors for every way it fails,
the online ones against a small hub endpoint on 127.0.0.1. Each case runs in a fresh process
with its own environment, as a user's shell would."""

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from prefscale.smoke.models import publish

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def resolve(spec: str, hf_home: Path, **env: str) -> tuple[int, str]:
    """Resolve and load ``spec`` in a fresh process: (exit code, the printed folder or the error line)."""
    code = ("import sys\nfrom prefscale.errors import PrefscaleError\nfrom prefscale.models.loading import load_classifier, load_tokenizer, resolve_model_path\n"
            "try:\n    folder = resolve_model_path(sys.argv[1])\n    load_tokenizer(sys.argv[1]); load_classifier(sys.argv[1])\n    print(folder)\n"
            "except PrefscaleError as exc:\n    print(exc); sys.exit(2)\n")
    environment = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", **env}
    environment.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, cwd=REPO, env=environment, timeout=120)
    lines = result.stdout.strip().splitlines()
    return result.returncode, lines[-1] if lines else result.stderr[-2000:]


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory, tiny_llama_path, tiny_bert_path) -> Path:
    home = tmp_path_factory.mktemp("hf_home")
    publish(str(home / "hub"), "meta-llama/Meta-Llama-3-70B", tiny_llama_path, commit=COMMIT)
    publish(str(home / "hub"), "org/tiny-bert", tiny_bert_path, commit="f" * 40, ref="v1")
    pickled = tmp_path_factory.mktemp("pickled")
    (pickled / "config.json").write_text((Path(tiny_bert_path) / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    publish(str(home / "hub"), "org/pickled", str(pickled), commit=COMMIT)
    return home


def test_a_cached_hub_id_loads_offline_by_name_and_by_revision(hf_home):
    code, folder = resolve("meta-llama/Meta-Llama-3-70B", hf_home)
    assert code == 0, folder
    assert folder == str(hf_home / "hub" / "models--meta-llama--Meta-Llama-3-70B" / "snapshots" / COMMIT)
    assert resolve(f"meta-llama/Meta-Llama-3-70B@{COMMIT}", hf_home) == (0, folder)
    assert resolve("org/tiny-bert@v1", hf_home)[0] == 0  # a tag (or branch) read from refs/


@pytest.mark.parametrize("spec, message", [
    ("org/not-cached", "not in the hub cache"),
    ("meta-llama/Meta-Llama-3-70B@v9", "not in the hub cache"),
    ("org/pickled", "has no .safetensors weights"),
])
def test_offline_failures_are_one_line(hf_home, spec, message):
    code, line = resolve(spec, hf_home)
    assert code == 2 and message in line, line
    assert "HF_HUB_OFFLINE is set" in line or "safetensors" in line


class FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers repo look-ups the way the hub does for gated, missing, unauthorised repos and bad revisions."""

    ANSWERS = {
        "/api/models/org/gated/revision/main": (403, {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to model org/gated is restricted."}),
        "/api/models/org/missing/revision/main": (404, {"X-Error-Code": "RepoNotFound"}),
        "/api/models/org/tiny-bert/revision/v9": (404, {"X-Error-Code": "RevisionNotFound"}),
        "/api/models/org/private/revision/main": (401, {"X-Error-Message": "Invalid credentials in Authorization header"}),
    }

    def do_GET(self):  # noqa: N802 (http.server's name)
        status, headers = self.ANSWERS.get(self.path, (500, {}))
        body = json.dumps({"error": "no"}).encode()
        self.send_response(status)
        for key, value in {**headers, "Content-Type": "application/json", "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def fake_hub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("spec, message", [
    ("org/gated", "is gated"),
    ("org/missing", "is not on the hub or not visible to your token"),
    ("org/tiny-bert@v9", "has no revision 'v9'"),
    ("org/private", "refused org/private (HTTP 401)"),
])
def test_online_failures_are_one_line(hf_home, fake_hub, spec, message):
    code, line = resolve(spec, hf_home, HF_HUB_OFFLINE="0", HF_ENDPOINT=fake_hub, HF_TOKEN="hf_test_token")
    assert code == 2 and message in line, line
    assert "hf_test_token" not in line  # the token never reaches a message


def test_doctor_sizes_a_cached_hub_model_from_the_cache(hf_home, tiny_llama_path):
    """What `prefscale doctor` reports for a hub id: the cached snapshot's safetensors bytes and stored dtype."""
    code = "from prefscale.doctor import model_footprint; print(*model_footprint('meta-llama/Meta-Llama-3-70B'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                            env={**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    size, dtype = result.stdout.split()
    assert int(size) == sum(p.stat().st_size for p in Path(tiny_llama_path).glob("*.safetensors")) and dtype in ("fp32", "bf16", "fp16")
