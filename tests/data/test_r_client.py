"""The R client (images/client-r) in the notebook image: write, read, history,
rollback, pinning and typed errors, and it reads what Python wrote and vice versa."""

from __future__ import annotations

import pandas as pd
import pytest

from dockyard.settings import Settings
from tests.data.incontainer import NOTEBOOK_IMAGE, run_in_notebook_image
from tests.support.requirements import require_image

R_SCRIPT = r"""
suppressMessages(library(dockyard))
df <- data.frame(city = c("Oslo", "Lima"), temp = c(3.5, 19), n = c(1L, 2L),
                 stringsAsFactors = FALSE)
b1 <- dy_writer(df, "rside", "weather", partitions = list(day = 20240101))
df2 <- df; df2$temp <- df2$temp + 1
b2 <- dy_writer(df2, "rside", "weather", partitions = list(day = "20240101"))
stopifnot(identical(b2$previous_batch_id, b1$batch_id))
got <- dy_reader("rside", "weather", partitions = list(day = "20240101"))
stopifnot(identical(got$temp, df2$temp), identical(got$city, df$city),
          all(got$day == "20240101"), identical(as.integer(got$n), df$n))
h <- dy_history("rside", "weather")
stopifnot(nrow(h) == 2, identical(h$batch_id, c(b1$batch_id, b2$batch_id)))
r <- dy_rollback("rside", "weather", partition = list(day = "20240101"))
stopifnot(identical(r$action, "rollback"), identical(r$batch_id, b1$batch_id))
stopifnot(identical(dy_reader("rside", "weather")$temp, df$temp))
stopifnot(identical(dy_reader("rside", "weather", batch_id = b2$batch_id)$temp, df2$temp))
stopifnot(identical(tryCatch(dy_reader("no", "such"),
                             dockyard_table_not_found = function(e) "typed"), "typed"))
stopifnot(identical(tryCatch(dy_writer(data.frame(temp = "x"), "rside", "weather",
                                       partitions = list(day = "2")),
                             dockyard_schema_mismatch = function(e) "typed"), "typed"))
stopifnot(nrow(dy_tables()) >= 2, nrow(dy_partitions("rside", "weather")) == 1)
one <- dy_writer(data.frame(x = 1L), "rside", "single")
stopifnot(identical(dy_reader("rside", "single")$x, 1L))
odd <- data.frame(when = as.POSIXct(c("2024-01-01 10:00:00", NA), tz = "UTC"),
                  k = c(NA, 2L), s = c(NA, "b"), flag = c(TRUE, NA),
                  stringsAsFactors = FALSE)
invisible(dy_writer(odd, "rside", "odd"))
back <- dy_reader("rside", "odd")
stopifnot(identical(back$k, c(NA, 2L)), identical(back$s, c(NA, "b")),
          identical(back$flag, c(TRUE, NA)), is.na(back$when[2]),
          abs(as.double(back$when[1]) - as.double(odd$when[1])) < 1e-3)
py <- dy_reader("pyside", "numbers")
stopifnot(nrow(py) == 3, identical(sort(py$x), c(1, 2, 3)))
cat("R-CLIENT-OK\n")
"""


@pytest.mark.docker
@pytest.mark.timeout(600)
def test_r_client_in_the_notebook_image(connect, live_url: str, migrated: Settings) -> None:
    require_image(NOTEBOOK_IMAGE)
    alice = connect("tok-alice")
    alice.store_dataframe(pd.DataFrame({"x": [1.0, 2.0, 3.0]}), "pyside", "numbers")
    result = run_in_notebook_image(R_SCRIPT, program=["Rscript", "-e"], live_url=live_url,
                                   token="tok-alice", data_dir=migrated.data_dir)
    assert "R-CLIENT-OK" in result.stdout, result.stdout + result.stderr
    from_r = alice.load_dataframe("rside", "weather")
    assert from_r["city"].tolist() == ["Oslo", "Lima"] and from_r["temp"].tolist() == [3.5, 19]
    assert [h["actor"] for h in alice.history("rside", "weather")] == ["alice"] * 3


QUIET_SCRIPT = r"""
suppressMessages(library(dockyard))
cat("WRITES-START\n")
dy_writer(data.frame(x = 1:3), "quiet", "writes")
dy_writer(data.frame(x = 4:6), "quiet", "writes")
dy_rollback("quiet", "writes")
cat("WRITES-END\n")
kept <- dy_writer(data.frame(x = 7L), "quiet", "writes")
stopifnot(nchar(kept$batch_id) > 0, !is.null(kept$previous_batch_id))
dy_history("quiet", "writes")
"""


@pytest.mark.docker
@pytest.mark.timeout(600)
def test_r_writers_return_invisibly_and_readers_visibly(live_url: str, migrated: Settings) -> None:
    require_image(NOTEBOOK_IMAGE)
    result = run_in_notebook_image(QUIET_SCRIPT, program=["Rscript", "-e"], live_url=live_url,
                                   token="tok-alice", data_dir=migrated.data_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    writes = result.stdout.split("WRITES-START\n", 1)[1].split("WRITES-END\n", 1)
    assert writes[0] == "", f"dy_writer()/dy_rollback() printed:\n{writes[0][:2000]}"
    # The value is there when kept, and a reader's result prints at top level.
    assert "batch_id" in writes[1] and "rollback" in writes[1], writes[1]
