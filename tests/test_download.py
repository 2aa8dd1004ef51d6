"""download_data.sh end to end against a local HTTP server with small fixture archives."""
import gzip
import io
import os
import re
import shutil
import subprocess
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import REPO

SCRIPT = str(REPO / "download_data.sh")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("curl") is None or shutil.which("bash") is None,
                                                   reason="needs bash and curl")]

TAR_MEMBERS = {
    "collection.tsv": "0\tthe presence of communication amid scientific minds\n1\tmanhattan project\n",
    "queries.train.tsv": "121352\tdefine extreme\n",
    "qrels.train.tsv": "121352\t0\t1\t1\n",
    "queries.dev.tsv": "2\t Androgen receptor define\n",
    "queries.dev.small.tsv": "2\t Androgen receptor define\n",
    "qrels.dev.small.tsv": "2\t0\t0\t1\n",
    "queries.eval.small.tsv": "19335\tanthropological definition of environment\n",
}
PASSAGE_GZ = {"msmarco-test2019-queries.tsv": "19335\tanthropological definition of environment\n"}
DOC_GZ = {
    # big enough that a resumed download is a real byte range
    "msmarco-docs.tsv": "".join(f"D{i}\thttp://x/{i}\ttitle {i}\tbody {i} {os.urandom(8).hex()}\n"
                                for i in range(3000)),
    "msmarco-doctrain-queries.tsv": "174249\tdoes xpress bet charge to deposit money\n",
    "msmarco-doctrain-qrels.tsv": "174249 0 D1 1\n",
    "msmarco-test2019-queries.tsv": PASSAGE_GZ["msmarco-test2019-queries.tsv"],
    "msmarco-docdev-queries.tsv": "174249\tdoes xpress bet charge to deposit money\n",
    "msmarco-docdev-qrels.tsv": "174249 0 D2 1\n",
    "docleaderboard-queries.tsv": "1\tq\n",
}
TREC = {"2019qrels-pass.txt": "19335 Q0 0 1\n", "2019qrels-docs.txt": "19335 Q0 D1 3\n"}


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with single ``bytes=N-`` ranges (what curl -C - asks for); logs every request."""

    log: list = []

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.log.append(("HEAD", self.path, None))
        super().do_HEAD()

    def do_GET(self):
        rng = self.headers.get("Range")
        self.log.append(("GET", self.path, rng))
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        path = self.translate_path(self.path)
        if not m or not os.path.isfile(path):
            return super().do_GET()
        data = open(path, "rb").read()
        start = int(m.group(1))
        if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


def gz(text):
    return gzip.compress(text.encode(), mtime=0)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    ms, trec = root / "msmarcoranking", root / "deep"
    ms.mkdir(parents=True)
    trec.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in TAR_MEMBERS.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    (ms / "collectionandqueries.tar.gz").write_bytes(buf.getvalue())
    for name, text in {**PASSAGE_GZ, **DOC_GZ}.items():
        (ms / f"{name}.gz").write_bytes(gz(text))
    for name, text in TREC.items():
        (trec / name).write_text(text)

    log = []
    handler = type("H", (RangeHandler,), {"log": log})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    env = {**os.environ, "MSMARCO_URL": f"{base}/msmarcoranking", "TREC_DL_URL": f"{base}/deep",
           "DRHARD_DATA_DIR": str(tmp_path / "data")}
    yield {"env": env, "log": log, "www": root, "data": tmp_path / "data"}
    httpd.shutdown()
    httpd.server_close()


def download(server, *args):
    return subprocess.run(["bash", SCRIPT, *args], env=server["env"], capture_output=True, text=True, timeout=120)


def leftovers(folder):
    return [p.name for p in folder.rglob("*") if p.name.endswith((".part", ".tmp", ".gz"))
            and p.name != "collectionandqueries.tar.gz"]


def test_fetches_everything_then_rerun_downloads_nothing(server):
    res = download(server)
    assert res.returncode == 0, res.stderr
    passage, doc = server["data"] / "passage" / "dataset", server["data"] / "doc" / "dataset"
    for name, text in {**TAR_MEMBERS, **PASSAGE_GZ, "2019qrels-pass.txt": TREC["2019qrels-pass.txt"]}.items():
        assert (passage / name).read_text() == text, name
    for name, text in {**DOC_GZ, "2019qrels-docs.txt": TREC["2019qrels-docs.txt"]}.items():
        assert (doc / name).read_text() == text, name
    assert leftovers(server["data"]) == []
    assert len(server["log"]) == 1 + len(PASSAGE_GZ) + len(DOC_GZ) + len(TREC)

    server["log"].clear()
    res = download(server)
    assert res.returncode == 0, res.stderr
    assert server["log"] == []
    assert "have" in res.stderr


def test_only_one_part(server):
    res = download(server, "--doc")
    assert res.returncode == 0, res.stderr
    assert not (server["data"] / "passage").exists()
    assert all("/deep/2019qrels-pass" not in path and "collectionandqueries" not in path
               for _, path, _ in server["log"])
    assert (server["data"] / "doc" / "dataset" / "docleaderboard-queries.tsv").exists()


def test_corrupt_archive_fails_loudly_and_is_removed(server):
    bad = server["www"] / "msmarcoranking" / "msmarco-doctrain-qrels.tsv.gz"
    bad.write_bytes(gz("174249 0 D1 1\n")[:-6] + b"garbage")
    res = download(server, "--doc")
    assert res.returncode != 0
    assert "corrupt archive" in res.stderr and "msmarco-doctrain-qrels.tsv.gz" in res.stderr
    doc = server["data"] / "doc" / "dataset"
    assert not (doc / "msmarco-doctrain-qrels.tsv").exists()
    assert leftovers(doc) == []
    assert not (doc / "msmarco-docdev-qrels.tsv").exists()      # it stopped there

    bad.write_bytes(gz("174249 0 D1 1\n"))                      # fixed upstream: the next run completes
    res = download(server, "--doc")
    assert res.returncode == 0, res.stderr
    assert (doc / "msmarco-doctrain-qrels.tsv").read_text() == "174249 0 D1 1\n"


def test_truncated_tarball_fails_naming_it(server):
    tarball = server["www"] / "msmarcoranking" / "collectionandqueries.tar.gz"
    tarball.write_bytes(tarball.read_bytes()[:-30])
    res = download(server, "--passage")
    assert res.returncode != 0 and "corrupt archive" in res.stderr and "collectionandqueries.tar.gz" in res.stderr
    dataset = server["data"] / "passage" / "dataset"
    assert not (dataset / "collection.tsv").exists() and leftovers(dataset) == []


def test_tarball_without_the_collection_fails_naming_it(server):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("readme.txt")
        tar.addfile(info, io.BytesIO(b""))
    (server["www"] / "msmarcoranking" / "collectionandqueries.tar.gz").write_bytes(buf.getvalue())
    res = download(server, "--passage")
    assert res.returncode != 0
    assert "collectionandqueries.tar.gz did not contain collection.tsv" in res.stderr
    assert not (server["data"] / "passage" / "dataset" / ".collectionandqueries.extracted").exists()


def test_missing_file_fails_naming_it(server):
    (server["www"] / "deep" / "2019qrels-pass.txt").unlink()
    res = download(server, "--passage")
    assert res.returncode == 1 and "download failed" in res.stderr and "2019qrels-pass.txt" in res.stderr
    # the exit-status convention of every DRhard program: one `error:` line, the last one (curl's own
    # diagnostic line may precede it)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and res.stderr.splitlines()[-1] == errors[0]


def test_a_bad_argument_is_a_usage_error(server):
    res = download(server, "--bogus")
    assert res.returncode == 2
    assert res.stderr.splitlines()[-1] == "error: download_data.sh: unknown argument: --bogus"
    assert not server["data"].exists() and server["log"] == []


def test_ctrl_c_exits_130(server):
    import signal
    import socket
    import time
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers: curl waits
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    env = {**server["env"], "MSMARCO_URL": f"http://127.0.0.1:{silent.getsockname()[1]}/msmarcoranking"}
    proc = subprocess.Popen(["bash", SCRIPT, "--passage"], env=env, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
        _, err = proc.communicate(timeout=60)
    finally:
        silent.close()
    assert proc.returncode == 130, err
    assert err.splitlines()[-1] == "interrupted"


def test_partial_download_is_resumed(server):
    full = (server["www"] / "msmarcoranking" / "msmarco-docs.tsv.gz").read_bytes()
    assert len(full) > 10_000
    doc = server["data"] / "doc" / "dataset"
    doc.mkdir(parents=True)
    half = len(full) // 2
    (doc / "msmarco-docs.tsv.gz.part").write_bytes(full[:half])
    res = download(server, "--doc")
    assert res.returncode == 0, res.stderr
    assert ("GET", "/msmarcoranking/msmarco-docs.tsv.gz", f"bytes={half}-") in server["log"]
    assert (doc / "msmarco-docs.tsv").read_text() == DOC_GZ["msmarco-docs.tsv"]


def test_part_that_is_already_complete(server):
    """Killed between download and rename: the server answers 416 to the resume and that is fine."""
    full = (server["www"] / "msmarcoranking" / "msmarco-doctrain-queries.tsv.gz").read_bytes()
    doc = server["data"] / "doc" / "dataset"
    doc.mkdir(parents=True)
    (doc / "msmarco-doctrain-queries.tsv.gz.part").write_bytes(full)
    res = download(server, "--doc")
    assert res.returncode == 0, res.stderr
    assert (doc / "msmarco-doctrain-queries.tsv").read_text() == DOC_GZ["msmarco-doctrain-queries.tsv"]
    assert not [r for r in server["log"] if r[0] == "GET" and r[1].endswith("/msmarco-doctrain-queries.tsv.gz")]


def test_stale_part_longer_than_remote_is_discarded(server):
    full = (server["www"] / "msmarcoranking" / "msmarco-doctrain-qrels.tsv.gz").read_bytes()
    doc = server["data"] / "doc" / "dataset"
    doc.mkdir(parents=True)
    (doc / "msmarco-doctrain-qrels.tsv.gz.part").write_bytes(full + b"old bytes from another version")
    res = download(server, "--doc")
    assert res.returncode == 0, res.stderr
    assert (doc / "msmarco-doctrain-qrels.tsv").read_text() == DOC_GZ["msmarco-doctrain-qrels.tsv"]
