"""dockyard/notebook, run for real: kernels, notebooks, Spark, Ray, R, clients, hygiene."""

from __future__ import annotations

import json
import re

import pytest

from tests.images.imagerun import (
    SYSTEM_FINGERPRINTS,
    ImageRunner,
    build_ca_bundle,
    pem_fingerprints,
    r_client_package,
)

pytestmark = [pytest.mark.image, pytest.mark.docker]

SIZE_BUDGET = 2_200_000_000  # bytes, uncompressed (docker image inspect .Size)


def notebook_json(kernel: str, language: str, cells: list[str]) -> str:
    return json.dumps({
        "cells": [
            {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
             "source": source}
            for source in cells
        ],
        "metadata": {"kernelspec": {"name": kernel, "language": language,
                                    "display_name": kernel}},
        "nbformat": 4,
        "nbformat_minor": 5,
    })


def run_notebook(notebook: ImageRunner, kernel: str, language: str, cells: list[str]) -> str:
    """Executes the notebook with papermill in a container; returns the executed notebook."""
    return notebook.ok(
        'printf "%s" "$NB" > /tmp/in.ipynb'
        f" && papermill --no-progress-bar -k {kernel} /tmp/in.ipynb /tmp/out.ipynb >&2"
        " && echo OUTPUT-NOTEBOOK && cat /tmp/out.ipynb",
        environment={"NB": notebook_json(kernel, language, cells)},
        timeout=600,
    ).split("OUTPUT-NOTEBOOK", 1)[1]


def test_kernels_python3_and_ir(notebook: ImageRunner) -> None:
    out = notebook.ok("jupyter kernelspec list --json")
    specs = json.loads(out[out.index("{"):])["kernelspecs"]
    assert {"python3", "ir"} <= set(specs)


def test_python_notebook_executes(notebook: ImageRunner) -> None:
    executed = run_notebook(notebook, "python3", "python", [
        "import numpy as np, pandas as pd, scipy, sklearn, pyarrow, s3fs, boto3\n"
        "import matplotlib.pyplot as plt\n"
        "df = pd.DataFrame({'x': np.arange(10)})",
        "plt.plot(df.x, df.x ** 2)\nplt.show()",
        "import sys\nprint('RESULT-' + str(int(df.x.sum())), 'PREFIX-' + sys.prefix)",
    ])
    assert "RESULT-45" in executed
    assert "PREFIX-/opt/venv" in executed, "the python3 kernel must run the image's venv"
    assert '"image/png"' in executed, "the inline plot did not render"


def test_r_notebook_executes(notebook: ImageRunner) -> None:
    executed = run_notebook(notebook, "ir", "R", [
        "suppressPackageStartupMessages(library(dplyr))",
        "n <- tibble(x = 1:10) %>% summarise(s = sum(x)) %>% pull(s)\n"
        "cat(paste0('RESULT-', n))",
    ])
    assert "RESULT-55" in executed


SPARK = """
from pyspark.sql import SparkSession
spark = SparkSession.builder.appName("image-test").getOrCreate()
print("MASTER", spark.sparkContext.master)
print("SUM", spark.range(1000).selectExpr("sum(id)").collect()[0][0])
spark.stop()
"""


def test_spark_sum_in_local_mode(notebook: ImageRunner) -> None:
    out = notebook.ok(["python", "-c", SPARK], timeout=600)
    assert "SUM 499500" in out
    assert "MASTER local[*]" in out


def test_spark_master_comes_from_spark_master(notebook: ImageRunner) -> None:
    # A cluster URL cannot be reached here; a different local master proves the plumbing.
    out = notebook.ok(["python", "-c", SPARK], environment={"SPARK_MASTER": "local[2]"},
                      timeout=600)
    assert "MASTER local[2]" in out
    assert "SUM 499500" in out


RAY = """
import ray
ray.init(num_cpus=1, include_dashboard=False)

@ray.remote
def square(x):
    return x * x

print("RAY", sum(ray.get([square.remote(i) for i in range(5)])))
ray.shutdown()
"""


def test_ray_remote_function_in_a_local_ray(notebook: ImageRunner) -> None:
    out = notebook.ok(["python", "-c", RAY], timeout=600)
    assert "RAY 30" in out


def test_ray_dashboard_can_start_on_a_cluster_head(notebook: ImageRunner) -> None:
    # ray.dashboard.optional_deps is Ray's own list of what the dashboard and its agent
    # import: when it fails, `ray start --head` silently runs without the dashboard that
    # Dockyard proxies and that the head's readiness probe asks.
    out = notebook.ok(["python", "-c", "import ray.dashboard.optional_deps, ray.dashboard.head,"
                       " ray.dashboard.agent; print('DASHBOARD-DEPS OK')"])
    assert "DASHBOARD-DEPS OK" in out


def test_ray_sends_no_usage_stats(notebook: ImageRunner) -> None:
    env = dict(item.split("=", 1) for item in notebook.inspect()["Config"]["Env"])
    assert env.get("RAY_USAGE_STATS_ENABLED") == "0"


R_PLOT = """
suppressPackageStartupMessages({
  library(dplyr); library(magrittr); library(ggplot2); library(lme4); library(boot)
  library(httr); library(jsonlite); library(reticulate)
})
p <- ggplot(mtcars %>% filter(cyl > 4), aes(wt, mpg)) + geom_point()
ggsave("/tmp/plot.png", p, width = 4, height = 3, dpi = 72)
cat("PNG", identical(readBin("/tmp/plot.png", "raw", 8),
                     as.raw(c(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a))), "\\n")
cat("PY", py_config()$python, "\\n")
cat("CLIENT", py_module_available("dockyard_data"), "\\n")
"""


def test_r_packages_load_and_a_plot_renders_to_png(notebook: ImageRunner) -> None:
    out = notebook.ok(["Rscript", "-e", R_PLOT], timeout=300)
    assert "PNG TRUE" in out
    assert "PY /opt/venv/bin/python" in out, "reticulate should use the image's virtualenv"
    assert "CLIENT TRUE" in out


def test_python_data_client_imports(notebook: ImageRunner) -> None:
    out = notebook.ok(["python", "-c", "import dockyard_data; print('V', dockyard_data.__file__)"])
    assert "/opt/venv/lib/" in out


def test_r_data_client_loads(notebook: ImageRunner) -> None:
    package = r_client_package()
    script = (
        f"suppressPackageStartupMessages(library({package}));"
        "cat('FUNS', all(sapply(c('dy_writer', 'dy_reader', 'dy_history', 'dy_rollback'),"
        f" exists, envir = asNamespace('{package}'))), '\\n')"
    )
    assert "FUNS TRUE" in notebook.ok(["Rscript", "-e", script])


def test_runs_as_uid_1000_with_tini_as_pid_1(notebook: ImageRunner) -> None:
    config = notebook.inspect()["Config"]
    assert config["User"] == "1000"
    assert config["Entrypoint"][0] == "tini"
    assert config["Cmd"] == ["jupyterhub-singleuser"]
    out = notebook.ok("id -u; id -g; ps -o comm= -p 1; git --version; java -version 2>&1")
    lines = out.split()
    assert lines[:3] == ["1000", "100", "tini"]
    assert "git version" in out and "openjdk" in out.lower()


def test_fresh_named_volume_on_home_belongs_to_the_user(
    notebook: ImageRunner, fresh_volume: str
) -> None:
    out = notebook.ok("stat -c %u:%g /home/jovyan && touch /home/jovyan/written && echo OK",
                      volumes={fresh_volume: {"bind": "/home/jovyan", "mode": "rw"}})
    assert out.split() == ["1000:100", "OK"]


def test_singleuser_matches_the_hub_major_version(notebook: ImageRunner) -> None:
    from importlib.metadata import version

    hub_major = version("jupyterhub").split(".")[0]
    out = notebook.ok("jupyterhub-singleuser --version")
    assert out.strip().split(".")[0] == hub_major


SERVER_START_IMPORTS = r"""
import sys
from jupyter_server.serverapp import ServerApp

app = ServerApp.instance()
app.initialize(argv=["--port=8897", "--no-browser"])  # links and loads every extension
print("EXTENSIONS", " ".join(sorted(app.extension_manager.extensions)))
print("IRI_GRAMMAR", "rfc3987_syntax" in sys.modules or "lark" in sys.modules)
"""


def test_a_server_start_does_not_compile_the_iri_grammar(notebook: ImageRunner) -> None:
    """With rfc3987-syntax installed, jsonschema (imported by jupyter_events at every
    server start) compiles its grammar: 0.8 s of a 1.8 s start. The image leaves it out;
    every server extension still loads."""
    out = notebook.ok(["python", "-c", SERVER_START_IMPORTS])
    assert "IRI_GRAMMAR False" in out
    extensions = out.split("EXTENSIONS", 1)[1].split("\n", 1)[0].split()
    assert {"jupyterlab", "jupyter_scheduler", "jupyter_server_terminals"} <= set(extensions)


JUPYTER_OFFLINE = r"""
import json, subprocess, time, urllib.request
from jupyter_server.serverapp import ServerApp

# The traits JupyterLab's server extension really runs with (config files as loaded).
app = ServerApp.instance()
app.initialize(argv=["--port=8898", "--no-browser"])
for apps in app.extension_manager.extension_apps.values():
    for ext in apps:
        if hasattr(ext, "news_url"):
            print("LABAPP", json.dumps({"news_url": ext.news_url,
                                        "updates": ext.check_for_updates_class.__name__,
                                        "extensions": ext.extension_manager}))

# And what the browser gets: the settings schema with the image's overrides as defaults.
server = subprocess.Popen(["jupyter", "lab", "--no-browser", "--ip=127.0.0.1", "--port=8899",
                           "--IdentityProvider.token=t"], stderr=subprocess.DEVNULL)
def get(path):
    with urllib.request.urlopen("http://127.0.0.1:8899" + path + "?token=t", timeout=10) as r:
        return json.load(r)
for _ in range(240):
    try:
        get("/api")
        break
    except OSError:
        time.sleep(0.5)
schema = get("/lab/api/settings/@jupyterlab/apputils-extension:notification")["schema"]
print("DEFAULTS", json.dumps({k: v.get("default") for k, v in schema["properties"].items()}))
print("NEWS", json.dumps(get("/lab/api/news")))
server.terminate()
"""


def check_jupyter_makes_no_calls_of_its_own(image: ImageRunner) -> None:
    # No network at all: the server must start all the same.
    out = image.ok(["python", "-c", JUPYTER_OFFLINE], network_mode="none", timeout=300)

    def field(name: str) -> dict:
        found = re.search(rf"^{name} (.*)$", out, re.M)
        assert found, f"no {name} line in:\n{out[-3000:]}"
        return json.loads(found.group(1))

    # The read-only extension manager never queries PyPI.
    assert field("LABAPP") == {
        "news_url": None, "updates": "NeverCheckForUpdate", "extensions": "readonly"
    }
    defaults = field("DEFAULTS")
    assert defaults["fetchNews"] == "false"
    assert defaults["checkForUpdates"] is False
    assert field("NEWS") == {"news": []}


def test_jupyterlab_news_and_update_checks_are_off(notebook: ImageRunner) -> None:
    check_jupyter_makes_no_calls_of_its_own(notebook)


HYGIENE = """
set -u
find /var/cache/apt -name '*.deb' | sed 's/^/APT-DEB /'
ls /var/lib/apt/lists | grep -vx -e lock -e partial | sed 's/^/APT-LIST /'
for d in /root/.cache/pip /home/jovyan/.cache/pip /tmp/req /tmp/clients /tmp/build-ca; do
  [ -e "$d" ] && echo "LEFT $d"
done
find /opt/venv -path '*/site-packages/*' -type d -name tests | sed 's/^/TESTS /' | head
find /usr/share/man -type f | sed 's/^/MAN /' | head
find /usr/share/doc -type f ! -name copyright | sed 's/^/DOC /' | head
echo DONE
"""


def test_no_caches_tests_or_docs_left_behind(notebook: ImageRunner) -> None:
    out = notebook.ok(HYGIENE, user="0")
    leftovers = [line for line in out.splitlines() if line and line != "DONE"]
    assert out.strip().endswith("DONE")
    assert leftovers == []


def test_build_ca_is_trusted_by_python_and_java(notebook: ImageRunner) -> None:
    wanted = pem_fingerprints(build_ca_bundle())
    out = notebook.ok(["python", "-c", SYSTEM_FINGERPRINTS])
    system = {line.split()[1] for line in out.splitlines() if line.startswith("FP ")}
    assert wanted <= system
    java = notebook.ok("keytool -list -cacerts -storepass changeit")
    java_fps = set(re.findall(r"\(SHA-256\): ([0-9A-F:]+)", java))
    assert wanted <= java_fps, f"{len(wanted - java_fps)} build CA certificates missing in Java"


def test_size_within_budget(notebook: ImageRunner) -> None:
    size = int(notebook.inspect()["Size"])
    assert size <= SIZE_BUDGET, f"dockyard/notebook is {size / 1e9:.2f} GB (budget 2.2 GB)"
