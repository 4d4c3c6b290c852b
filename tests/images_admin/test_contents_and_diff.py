"""Reading the inspection script's report, and comparing two images' contents."""

from __future__ import annotations

import json

from dockyard.images.diff import diff_contents
from spawner.images.inspect import SECTION_MARK, parse_report


def _report(**sections: str) -> str:
    return "".join(f"\n{SECTION_MARK}{name}\n{body}\n" for name, body in sections.items())


def test_a_full_report_is_read_section_by_section() -> None:
    python = {
        "version": "3.11.2",
        "packages": {"pyspark": "3.5.1", "Ray": "2.9.0", "pandas": "2.2.2"},
        "kernels": {"python3": {"display_name": "Python 3", "language": "python"}},
    }
    output = _report(
        os="Debian GNU/Linux 12 (bookworm)",
        python=json.dumps(python),
        r="@version 4.2.2 \nbase 4.2.2 \narrow 14.0.0 ",
        java='openjdk version "17.0.11" 2024-04-16',
        spark="Spark 3.5.0 built for Hadoop 3.3.4",
        end="",
    )
    report = parse_report(output)
    assert report["os"] == "Debian GNU/Linux 12 (bookworm)"
    assert report["python"] == "3.11.2"
    assert report["r"] == "4.2.2"
    assert report["java"] == "17.0.11"
    # pyspark's own version wins over the RELEASE file: it is what notebooks import.
    assert report["spark"] == "3.5.1"
    assert report["ray"] == "2.9.0"
    assert report["r_packages"] == {"arrow": "14.0.0", "base": "4.2.2"}
    assert list(report["pip_packages"]) == ["pandas", "pyspark", "Ray"]
    assert report["kernels"]["python3"]["display_name"] == "Python 3"
    assert report["complete"] is True and report["errors"] == []


def test_an_image_without_any_runtime_gives_an_empty_but_complete_report() -> None:
    report = parse_report(_report(os="Alpine Linux v3.19", spark="", end=""))
    assert report["os"] == "Alpine Linux v3.19"
    assert [report[k] for k in ("python", "r", "java", "spark", "ray")] == [None] * 5
    assert report["pip_packages"] == {} and report["kernels"] == {}
    assert report["complete"] is True


def test_kernels_from_the_jupyter_command_and_spark_from_its_release_file() -> None:
    specs = {"kernelspecs": {"ir": {"spec": {"display_name": "R", "language": "R"}}}}
    report = parse_report(
        _report(kernelspecs=json.dumps(specs), spark="Spark 3.4.2 built for Hadoop 3", end="")
    )
    assert report["kernels"] == {"ir": {"display_name": "R", "language": "R"}}
    assert report["spark"] == "3.4.2"


def test_a_cut_off_or_garbled_report_says_so() -> None:
    report = parse_report(_report(python="{not json"))
    assert report["complete"] is False
    assert report["errors"] == ["the Python report was not readable"]


def test_diff_names_added_removed_and_changed() -> None:
    v3 = {
        "python": "3.11.2", "r": "4.2.2", "spark": "3.5.0", "ray": None, "java": "17.0.10",
        "kernels": {"python3": {}, "ir": {}},
        "pip_packages": {"pandas": "2.1.0", "Scikit_Learn": "1.3.0", "old-thing": "1.0",
                         "numpy": "1.26.4"},
        "r_packages": {"dplyr": "1.1.3", "arrow": "13.0.0"},
    }
    v4 = {
        "python": "3.11.4", "r": "4.2.2", "spark": "3.5.1", "ray": "2.9.0", "java": "17.0.10",
        "kernels": {"python3": {}, "julia": {}},
        "pip_packages": {"pandas": "2.2.2", "scikit-learn": "1.3.0", "ray": "2.9.0",
                         "numpy": "1.26.4"},
        "r_packages": {"dplyr": "1.1.4", "arrow": "13.0.0", "sparklyr": "1.8.4"},
    }
    diff = diff_contents(v3, v4)
    assert diff["versions"] == [
        {"name": "python", "old": "3.11.2", "new": "3.11.4"},
        {"name": "spark", "old": "3.5.0", "new": "3.5.1"},
        {"name": "ray", "old": None, "new": "2.9.0"},
    ]
    assert diff["kernels"] == {"added": ["julia"], "removed": ["ir"]}
    pip = diff["pip_packages"]
    assert pip["added"] == [{"name": "ray", "version": "2.9.0"}]
    assert pip["removed"] == [{"name": "old-thing", "version": "1.0"}]
    assert pip["changed"] == [{"name": "pandas", "old": "2.1.0", "new": "2.2.2"}]
    # Scikit_Learn and scikit-learn are one distribution (PEP 503 names).
    assert pip["unchanged"] == 2
    r = diff["r_packages"]
    assert r["added"] == [{"name": "sparklyr", "version": "1.8.4"}]
    assert r["changed"] == [{"name": "dplyr", "old": "1.1.3", "new": "1.1.4"}]
    assert r["removed"] == [] and r["unchanged"] == 1


def test_diff_of_uninspected_images_is_empty_not_an_error() -> None:
    diff = diff_contents({}, {})
    assert diff["versions"] == []
    assert diff["pip_packages"] == {"added": [], "removed": [], "changed": [], "unchanged": 0}
