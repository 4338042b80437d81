"""bench.loss runs end to end on a tiny size and says why it skips what it cannot run."""
import argparse

import pytest

from bench import loss


@pytest.fixture(scope="module")
def bench():
  return loss


def test_jax_rows_agree_and_fill_the_table(bench, capsys):
  bench.main(["--sizes", "8", "--repeats", "1", "--impls", "matmul,jax_dense,jax_blockwise",
              "--block-size", "3"])
  table = capsys.readouterr().out
  rows = {line.split()[1] + line.split()[2]: line.split() for line in table.splitlines()
          if line.strip().startswith("8 ")}
  assert set(rows) == {"matmulx4", "jaxdense", "jaxblockwise"}, table
  assert rows["jaxdense"][-1] == rows["jaxblockwise"][-1]  # the same loss value


def test_torch_rows_are_skipped_with_the_reason_when_torch_is_missing(bench, monkeypatch):
  monkeypatch.setattr(bench, "importable", lambda module: False)
  args = argparse.Namespace(views=2, dim=4, repeats=1, block_size=None, timeout=10)
  result = bench.run_case("pml", 8, args)
  assert "torch and pytorch_metric_learning not installed" in result["skipped"]
  assert "bench/requirements.txt" in result["skipped"]
