"""`prepare`: the numba steps against plain references, the real datasets end to end, the
meta.json record, and the bad-input contract (one line on stderr, exit status 2, nothing left)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atjt_dist.command_options import pop_command_options
from atjt_dist.data import prepare
from atjt_dist.data.layout import open_arrays

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "raw"
SHARED_DATA = Path(os.environ.get("ATJT_SHARED_DATA", REPO.parent / "shared" / "data"))

SHA256 = {  # from the READMEs in ../shared/data
    "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
    "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
    "Beauty.txt": "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
    "Magazine_Subscriptions.csv": "6e1b48a78f7d4713a3f15abb028d5a1258e3c06d04b258b9d478f55d057a6696",
    "AMAZON_FASHION_5.json.gz": "5c73b65d0a5cc5dcd905b75a87086c37513ff0d023b02b381e729ab8a9541cb6",
}


def shared(*parts: str) -> Path:
    """A real dataset file under ../shared/data, or skip with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real dataset file {path} is not available (set ATJT_SHARED_DATA)")
    return path


def run_main(capsys, *argv) -> tuple[int, str, str]:
    code = prepare.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def prepared(capsys, out: Path, *argv) -> dict:
    """Run prepare (must succeed), check the directory's invariants, return meta.json."""
    code, stdout, stderr = run_main(capsys, *argv, "--output", out)
    assert code == 0, stderr
    check_dataset(out)
    return json.loads((out / "meta.json").read_text())


def check_dataset(path: Path) -> None:
    """Schemas, CSR consistency, id ranges and time order of a written dataset."""
    schemas = {
        "interactions": {"user": pa.int32(), "item": pa.int32(), "time": pa.int64()},
        "users": {
            "user": pa.int32(),
            "raw_user": pa.string(),
            "offset": pa.int64(),
            "length": pa.int32(),
            "fold": pa.int8(),
        },
        "items": {"item": pa.int32(), "raw_item": pa.string(), "category": pa.int32(), "popularity": pa.int64()},
        "categories": {"category": pa.int32(), "name": pa.string()},
    }
    for name, fields in schemas.items():
        schema = pq.read_schema(path / f"{name}.parquet")
        assert {f.name: f.type for f in schema} == fields, name
    ds = open_arrays(path)
    inter = pq.read_table(path / "interactions.parquet")
    users, times = inter.column("user").to_numpy(), inter.column("time").to_numpy()
    lengths = np.diff(ds.seq_offsets)
    assert ds.seq_offsets[0] == 0 and np.all(lengths > 0)
    assert np.array_equal(users, np.repeat(np.arange(ds.num_users), lengths))
    assert np.array_equal(inter.column("item").to_numpy(), ds.seq_items)
    assert ds.seq_items.min() >= 1 and ds.seq_items.max() <= ds.num_items
    assert np.all(np.bincount(ds.seq_items, minlength=ds.num_items + 1)[1:] > 0)  # every item used
    # Sorted by time within each user: a decrease only where a new user starts.
    assert np.all((np.diff(times) >= 0) | (np.diff(users) > 0))
    assert ds.item_category.min() >= 0 and ds.item_category.max() <= ds.num_categories
    assert ds.item_category[0] == 0
    raw_items = pq.read_table(path / "items.parquet").column("raw_item").to_pylist()
    assert len(set(raw_items)) == ds.num_items
    assert np.array_equal(ds.candidates[:, 0], ds.seq_items[ds.seq_offsets[1:] - 1])  # last item first


def sequences_by_raw_id(path: Path) -> dict[str, list[str]]:
    users = pq.read_table(path / "users.parquet").column("raw_user").to_pylist()
    items = pq.read_table(path / "items.parquet").column("raw_item").to_pylist()
    ds = open_arrays(path)
    return {users[u]: [items[i - 1] for i in ds.seq_items[ds.seq_offsets[u] : ds.seq_offsets[u + 1]]] for u in range(ds.num_users)}


def step(meta: dict, name: str) -> dict:
    return next(s for s in meta["dropped"] if s["step"] == name)


# ---------------------------------------------------------------------------------------------
# The kernels against plain references
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("time_span", [5, 2**60])  # many ties; then huge times
def test_sort_by_user_time_is_stable_by_user_time_row(time_span):
    rng = np.random.default_rng(1)
    n, num_users = 4000, 50
    user = rng.integers(0, num_users, n).astype(np.int32)
    time = rng.integers(-time_span, time_span, n).astype(np.int64)
    item = np.arange(n, dtype=np.int32)  # the row number, to see the order
    offsets, items, times = prepare.sort_by_user_time(user, item, time, num_users)
    expected = np.lexsort((np.arange(n), time, user))
    assert np.array_equal(items, expected) and np.array_equal(times, time[expected])
    assert np.array_equal(offsets, np.concatenate([[0], np.cumsum(np.bincount(user, minlength=num_users))]))


@pytest.mark.parametrize("n", [0, 1, 16, 17, 100, 3000])
def test_stable_sort_by_key_equals_numpy_stable_argsort(n):
    keys = np.random.default_rng(n).integers(-3, 4, n).astype(np.int64)  # many ties
    sorted_keys, payload = keys.copy(), np.arange(n, dtype=np.int64)
    prepare.stable_sort_by_key(sorted_keys, payload)
    expected = np.argsort(keys, kind="stable")
    assert np.array_equal(payload, expected) and np.array_equal(sorted_keys, keys[expected])


def test_first_of_pairs_keeps_each_users_first_row_per_item():
    rng = np.random.default_rng(2)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(0, 30, 40))]).astype(np.int64)
    item = rng.integers(0, 12, offsets[-1]).astype(np.int32)
    keep = prepare.first_of_pairs(offsets, item, 12, 3)
    expected = np.ones(len(item), dtype=bool)
    for u in range(len(offsets) - 1):
        seen = set()
        for r in range(offsets[u], offsets[u + 1]):
            expected[r] = item[r] not in seen
            seen.add(item[r])
    assert np.array_equal(keep, expected) and not keep.all()


def naive_k_core(pairs: list[tuple[int, int]], min_user: int, min_item: int) -> list[tuple[int, int]]:
    while True:
        users = {u: sum(1 for a, _ in pairs if a == u) for u, _ in pairs}
        items = {i: sum(1 for _, b in pairs if b == i) for _, i in pairs}
        kept = [(u, i) for u, i in pairs if users[u] >= min_user and items[i] >= min_item]
        if len(kept) == len(pairs):
            return kept
        pairs = kept


@pytest.mark.parametrize("min_user, min_item", [(3, 1), (3, 3), (2, 4)])
def test_k_core_matches_the_naive_fixpoint(min_user, min_item):
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 9, 60)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    item = rng.integers(0, 25, offsets[-1]).astype(np.int32)
    user = np.repeat(np.arange(60), counts)
    keep, passes, user_count, item_count = prepare.k_core(offsets, item, 25, min_user, min_item)
    expected = naive_k_core(list(zip(user.tolist(), item.tolist())), min_user, min_item)
    assert list(zip(user[keep].tolist(), item[keep].tolist())) == expected
    assert np.array_equal(user_count, np.bincount(user[keep], minlength=60))
    assert np.array_equal(item_count, np.bincount(item[keep], minlength=25))
    assert passes >= 2 and 0 < keep.sum() < len(keep)


def test_compact_recomputes_offsets():
    offsets = np.array([0, 2, 3, 6], dtype=np.int64)
    keep = np.array([True, False, False, True, True, False])
    items, times = np.arange(6, dtype=np.int32), np.arange(6) * 10
    new_offsets, n = prepare.compact(offsets, items, times, keep)
    assert new_offsets.tolist() == [0, 1, 1, 3] and n == 3
    assert items[:n].tolist() == [0, 3, 4] and times[:n].tolist() == [0, 30, 40]


# ---------------------------------------------------------------------------------------------
# Real datasets, with the defaults
# ---------------------------------------------------------------------------------------------


def test_ml100k_end_to_end(tmp_path, capsys):
    data, item = shared("ml-100k", "u.data"), shared("ml-100k", "u.item")
    meta = prepared(capsys, tmp_path / "ml", "--format", "movielens", "--input", data, item)
    assert meta["read"] == {"rows": 100_000, "users": 943, "items": 1_682, "categories": 19}
    # Every ml-100k user has >= 20 ratings and there are no repeated pairs: nothing is dropped.
    assert (meta["num_users"], meta["num_items"], meta["num_interactions"]) == (943, 1_682, 100_000)
    assert [s["rows"] for s in meta["dropped"]] == [0, 0, 0]
    assert step(meta, "k_core")["users"] == 0 and meta["num_categories"] == 19
    assert [(Path(s["path"]).name, s["sha256"], s["bytes"]) for s in meta["sources"]] == [
        ("u.data", SHA256["u.data"], 1_979_173),
        ("u.item", SHA256["u.item"], 236_344),
    ]
    assert meta["options"]["dedup"] is True and meta["options"]["min_user_interactions"] == 5
    assert meta["time_unit"] == "s" and meta["candidates"]["count"] == 64 and meta["folds"] == 5
    ds = open_arrays(tmp_path / "ml")
    assert np.diff(ds.seq_offsets).min() == 20  # the README's minimum
    users = pq.read_table(tmp_path / "ml" / "users.parquet").column("raw_user").to_pylist()
    assert users[:3] == ["1", "2", "3"]  # dense ids follow raw ids
    categories = pq.read_table(tmp_path / "ml" / "categories.parquet").column("name").to_pylist()
    assert categories == sorted(categories) and "Animation" in categories


def test_beauty_seqtxt_taken_as_it_is(tmp_path, capsys):
    path = shared("amazon-beauty-s3rec", "Beauty.txt")
    meta = prepared(capsys, tmp_path / "beauty", "--format", "seqtxt", "--input", path)
    assert (meta["num_users"], meta["num_items"], meta["num_interactions"]) == (22_363, 12_101, 198_502)
    assert meta["sources"][0]["sha256"] == SHA256["Beauty.txt"] and meta["sources"][0]["bytes"] == 1_090_094
    assert step(meta, "duplicates") == {"step": "duplicates", "rows": 0, "skipped": True}
    assert meta["time_unit"] == "position" and meta["num_categories"] == 0
    seqs = sequences_by_raw_id(tmp_path / "beauty")
    for line in path.read_text().splitlines()[:50]:
        user, *items = line.split()
        assert seqs[user] == items


def test_magazine_duplicates_and_the_readme_5_core(tmp_path, capsys):
    path = shared("amazon2018-magazine-fashion", "Magazine_Subscriptions.csv")
    base = ["--format", "amazon", "--input", path, "--amazon-csv-order", "item-first"]
    meta = prepared(capsys, tmp_path / "mag", *base)
    assert meta["read"]["rows"] == 89_689 and step(meta, "duplicates")["rows"] == 1_371
    assert (meta["num_users"], meta["num_items"], meta["num_interactions"]) == (635, 943, 4_567)
    assert step(meta, "k_core") | {"passes": None} == {
        "step": "k_core",
        "min_user_interactions": 5,
        "min_item_interactions": 1,
        "passes": None,
        "rows": 83_751,
        "users": 71_463,
        "items": 1_485,
    }
    assert meta["sources"][0]["sha256"] == SHA256["Magazine_Subscriptions.csv"]
    assert meta["options"]["amazon_csv_order"] == "item-first"
    # The README's check: iterative 5-core on users AND items over unique pairs.
    meta5 = prepared(capsys, tmp_path / "mag5", *base, "--min-item-interactions", "5", "--candidates", "16")
    assert (meta5["num_interactions"], meta5["num_users"], meta5["num_items"]) == (2_027, 294, 132)


def test_fashion_gzipped_json_with_few_candidates(tmp_path, capsys):
    path = shared("amazon2018-magazine-fashion", "AMAZON_FASHION_5.json.gz")
    code, _, err = run_main(capsys, "--format", "amazon", "--input", path, "--output", tmp_path / "f")
    # 12 items survive the user 5-core and a user owns 9: 63 negatives cannot be drawn.
    assert_refused(code, err, tmp_path / "f", "leaving fewer than 63 negatives for its test candidates; lower --candidates")
    meta = prepared(capsys, tmp_path / "fashion", "--format", "amazon", "--input", path, "--candidates", "4")
    assert meta["read"] == {"rows": 3_176, "users": 406, "items": 31, "categories": 0}
    assert step(meta, "duplicates")["rows"] == 134
    assert (meta["num_users"], meta["num_items"], meta["num_interactions"]) == (374, 12, 2_968)
    assert meta["sources"][0]["sha256"] == SHA256["AMAZON_FASHION_5.json.gz"]


# ---------------------------------------------------------------------------------------------
# Fixtures: options and formats end to end
# ---------------------------------------------------------------------------------------------


def test_rating_threshold_then_dedup_then_k_core(tmp_path, capsys):
    files = [FIXTURES / "ml-1m" / "ratings.dat", FIXTURES / "ml-1m" / "movies.dat"]
    meta = prepared(
        capsys,
        tmp_path / "d",
        "--format",
        "movielens",
        "--input",
        *files,
        "--min-rating",
        "3",
        "--min-user-interactions",
        "1",
        "--candidates",
        "2",
    )
    assert [s["step"] for s in meta["dropped"]] == ["rating_threshold", "duplicates", "k_core"]
    assert step(meta, "rating_threshold") == {"step": "rating_threshold", "min_rating": 3.0, "rows": 2}
    assert meta["num_interactions"] == 9 and meta["options"]["min_rating"] == 3.0
    seqs = sequences_by_raw_id(tmp_path / "d")
    # User 2 loses 661 (2) and 2355 (1); 914 and 3408 tie at 978299000 and keep file order.
    assert seqs["2"] == ["1287", "1193", "914", "3408"]
    categories = pq.read_table(tmp_path / "d" / "items.parquet").to_pydict()
    names = pq.read_table(tmp_path / "d" / "categories.parquet").column("name").to_pylist()
    by_item = {i: (names[c - 1] if c else None) for i, c in zip(categories["raw_item"], categories["category"])}
    assert by_item["3408"] == "Drama" and by_item["1287"] == "Action"


def test_dedup_defaults_and_overrides(tmp_path, capsys):
    reviews = FIXTURES / "yelp" / "yelp_academic_dataset_review.json"
    base = ["--format", "yelp", "--input", reviews, "--min-user-interactions", "1", "--candidates", "2", "--folds", "2"]
    revisits = prepared(capsys, tmp_path / "revisits", *base)
    assert revisits["options"]["dedup"] is False and revisits["num_interactions"] == 6
    # Alice reviewed the cafe twice: kept as a revisit, dropped with --dedup.
    assert sequences_by_raw_id(tmp_path / "revisits")["u_alice_0000000000000A"] == [
        "b_gym_0000000000000002",
        "b_cafe_000000000000001",
        "b_cafe_000000000000001",
    ]
    deduped = prepared(capsys, tmp_path / "dedup", *base, "--dedup")
    assert step(deduped, "duplicates")["rows"] == 1 and deduped["num_interactions"] == 5
    assert deduped["options"]["dedup"] is True


def test_amazon_2014_fixture_with_metadata(tmp_path, capsys):
    files = [FIXTURES / "amazon2014" / "reviews_Beauty_5.json", FIXTURES / "amazon2014" / "meta_Beauty.json"]
    meta = prepared(
        capsys,
        tmp_path / "a",
        "--format",
        "amazon",
        "--input",
        *files,
        "--min-user-interactions",
        "2",
        "--candidates",
        "2",
    )
    assert step(meta, "duplicates")["rows"] == 1  # the repeated review line
    assert step(meta, "k_core")["users"] == 1  # A3REVIEWERCCCC has one review
    assert meta["num_categories"] == 4
    names = pq.read_table(tmp_path / "a" / "categories.parquet").column("name").to_pylist()
    assert names == sorted(["Creams, Gels & Lotions", "Shaving", "Eyeliner", "Rock 'n' \"Roll\""])


def test_table_with_category_column(tmp_path, capsys):
    meta = prepared(
        capsys,
        tmp_path / "t",
        "--format",
        "table",
        "--input",
        FIXTURES / "table" / "interactions.csv",
        "--user-col",
        "user_id",
        "--item-col",
        "item_id",
        "--time-col",
        "ts",
        "--rating-col",
        "score",
        "--category-col",
        "genre",
        "--min-user-interactions",
        "2",
        "--candidates",
        "2",
        "--folds",
        "2",
    )
    assert meta["time_unit"] == "us" and meta["options"]["category_col"] == "genre"
    # u1's i10 and i9 share a time: file order.
    assert sequences_by_raw_id(tmp_path / "t") == {"u1": ["i10", "i9", "i1"], "u2": ["i1", "i9", "i7"]}


def test_log_has_one_line_per_step_with_counts(tmp_path, capsys):
    path = FIXTURES / "amazon2014" / "reviews_Beauty_5.json"
    code, out, _ = run_main(
        capsys,
        "--format",
        "amazon",
        "--input",
        path,
        "--output",
        tmp_path / "o",
        "--min-user-interactions",
        "2",
        "--candidates",
        "2",
        "--folds",
        "2",
    )
    assert code == 0
    assert "read 7 rows: 3 users, 5 items, 0 categories" in out
    assert "duplicates: dropped 1 repeated (user, item) rows, kept the earliest" in out
    assert "k-core (users >= 2, items >= 1): removed 1 users, 1 items, 1 rows in 2 passes" in out
    assert "final: 2 users, 4 items, 5 interactions, 0 categories" in out
    assert f"wrote {tmp_path / 'o'}" in out


def test_help_states_the_defaults(capsys):
    assert prepare.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m atjt_dist.data.prepare --format FORMAT --input PATH [PATH ...] --output DIR [options]\n")
    for expected in (
        "--min-user-interactions K iterative k-core: users keep >= K interactions (default: 5)",
        "--[no-]dedup",
        "movielens on",
        "amazon on",
        "yelp off",
        "seqtxt off",
        "table off",
        "items keep >= K interactions (1 = no item filter) (default: 1)",
        "default: 64",
        "one of popularity, uniform (default: popularity)",
        "steps, in order: 1. read",
    ):
        assert expected in " ".join(text.split()), expected


def test_options_keep_their_spellings_and_defaults():
    """Every flag of the argparse version, with its default: a spaced --input, the --dedup/--no-dedup
    tri-state, 'none' for an optional column, and --flag=value."""
    argv = ["--format=table", "--input", "a.csv", "b.csv", "--output", "out", "--no-dedup", "--min-rating", "3.5", "--rating-col", "none"]
    opts = pop_command_options(argv, prepare.PrepareOptions)
    assert argv == [] and opts.format == "table" and opts.input == [Path("a.csv"), Path("b.csv")] and opts.output == Path("out")
    assert opts.dedup is False and opts.min_rating == 3.5 and opts.rating_col is None
    assert (opts.min_user_interactions, opts.min_item_interactions, opts.folds, opts.fold_seed) == (5, 1, 5, 0)
    assert (opts.candidates, opts.candidate_sampler, opts.candidate_seed, opts.block_mb) == (64, "popularity", 0, 16)
    assert (opts.user_col, opts.item_col, opts.time_col, opts.delimiter) == ("user", "item", "time", ",")
    assert opts.amazon_csv_order is None and opts.category_col is None and not opts.overwrite and not opts.debug
    assert pop_command_options(["--format", "seqtxt", "--input", "s", "--output", "o", "--dedup"], prepare.PrepareOptions).dedup is True
    assert pop_command_options(["--format", "seqtxt", "--input", "s", "--output", "o"], prepare.PrepareOptions).dedup is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--input", "s", "--output", "o"], "--format FORMAT is required"),
        (["--format", "seqtxt", "--output", "o"], "--input PATH [PATH ...] is required"),
        (["--format", "seqtxt", "--input", "--output", "o"], "--input needs a value"),
        (["--format", "seqtxt", "--input", "s", "--output", "o", "--folds", "two"], "--folds: expected int, got 'two'"),
        (["--format", "seqtxt", "--input", "s", "--output", "o", "--candidate-sampler", "zipf"], "--candidate-sampler: unknown zipf"),
        (["--format", "seqtxt", "--input", "s", "--output", "o", "--min-users", "2"], "unknown option --min-users"),
    ],
)
def test_bad_options_are_one_line_naming_the_flag(tmp_path, capsys, argv, message):
    code, _, err = run_main(capsys, *[tmp_path / a if a in ("o", "s") else a for a in argv])
    assert_refused(code, err, tmp_path / "o", message)


# ---------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit status 2, nothing at the output path
# ---------------------------------------------------------------------------------------------


def assert_refused(code: int, err: str, output: Path, message: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prepare.PROG}: error: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err
    assert not output.exists()
    assert not list(output.parent.glob(f".{output.name}.tmp-*"))


def run_cli(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atjt_dist.data.prepare", *map(str, argv)], capture_output=True, text=True, cwd=REPO)


def test_cli_missing_file(tmp_path):
    done = run_cli("--format", "seqtxt", "--input", tmp_path / "nope.txt", "--output", tmp_path / "out")
    assert_refused(done.returncode, done.stderr, tmp_path / "out", f"input file {tmp_path / 'nope.txt'} does not exist")


def test_cli_unknown_format(tmp_path):
    done = run_cli("--format", "netflix", "--input", FIXTURES / "seqtxt" / "sequences.txt", "--output", tmp_path / "out")
    assert_refused(done.returncode, done.stderr, tmp_path / "out", "--format: unknown netflix; expected one of movielens, amazon")


def test_cli_unparsable_line_names_file_and_line(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("1\t2\t3\t4\n1\t3\t3\t5\n1\t4\tthree\t5\n")
    done = run_cli("--format", "movielens", "--input", path, "--output", tmp_path / "out")
    assert_refused(done.returncode, done.stderr, tmp_path / "out", f"{path}, line 3: rating is not a number: 'three'")


def test_debug_shows_the_traceback(tmp_path):
    done = run_cli("--format", "seqtxt", "--input", tmp_path / "nope.txt", "--output", tmp_path / "out", "--debug")
    assert done.returncode != 0 and "Traceback" in done.stderr and "PrepareError" in done.stderr


@pytest.mark.parametrize(
    "make_input, extra, message",
    [
        (lambda d: _write(d / "t.csv", "user,item,when\nu,i,1\n"), ["--format", "table"], "missing column(s) 'time'"),
        (
            lambda d: _write(d / "r.json", '{"reviewerID": "a", "asin": "b", "unixReviewTime": 1}\n{"reviewerID": "a"}\n'),
            ["--format", "amazon"],
            "r.json, line 2: no 'asin' value",
        ),
        (
            lambda d: _write(d / "u.data", "99999999999999999999\t1\t5\t1\n"),
            ["--format", "movielens"],
            "line 1: user id 99999999999999999999 does not fit in a 64-bit integer",
        ),
        (
            lambda d: _write(d / "s.txt", "1 2 3\n2 3 4\n"),
            ["--format", "seqtxt"],
            "no interactions left after the k-core filter (--min-user-interactions 5, --min-item-interactions 1)",
        ),
        (
            lambda d: FIXTURES / "ml-1m" / "ratings.dat",
            ["--format", "movielens", "--min-rating", "9"],
            "no interactions left after the rating threshold (--min-rating 9)",
        ),
        (
            lambda d: FIXTURES / "seqtxt" / "sequences.txt",
            ["--format", "seqtxt", "--min-rating", "3"],
            "--min-rating: these input files have no ratings",
        ),
        (lambda d: _write(d / "users.txt", "1\n2\n"), ["--format", "seqtxt"], "the input files hold no interactions"),
        (lambda d: _write(d / "blank.txt", "\n\n"), ["--format", "seqtxt"], "blank.txt is empty"),
        (lambda d: _write(d / "r.json", ""), ["--format", "amazon"], "r.json is empty"),
        (lambda d: FIXTURES / "amazon2014" / "ratings_Beauty.csv", ["--format", "amazon"], "--amazon-csv-order"),
        (
            lambda d: FIXTURES / "ml-1m" / "movies.dat",
            ["--format", "movielens"],
            "none of the inputs is a movielens interactions file",
        ),
        (
            lambda d: FIXTURES / "seqtxt" / "sequences.txt",
            ["--format", "seqtxt", "--candidates", "1"],
            "--candidates must be >= 2",
        ),
        (
            lambda d: FIXTURES / "seqtxt" / "sequences.txt",
            ["--format", "seqtxt", "--min-user-interactions", "1", "--candidates", "30"],
            "lower --candidates",
        ),
    ],
)
def test_bad_input_is_one_line_and_status_2(tmp_path, capsys, make_input, extra, message):
    path = make_input(tmp_path)
    output = tmp_path / "out"
    code, _, err = run_main(capsys, *extra, "--input", path, "--output", output)
    assert_refused(code, err, output, message)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_existing_output_is_refused_unless_overwrite(tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("precious")
    args = [
        "--format",
        "seqtxt",
        "--input",
        FIXTURES / "seqtxt" / "sequences.txt",
        "--output",
        output,
        "--min-user-interactions",
        "1",
        "--candidates",
        "2",
        "--folds",
        "2",
    ]
    code, _, err = run_main(capsys, *args)
    assert code == 2 and "is not empty; pass --overwrite" in err and len(err.strip().splitlines()) == 1
    assert (output / "keep.txt").read_text() == "precious"
    code, _, err = run_main(capsys, *args, "--overwrite")
    assert code == 0, err
    assert not (output / "keep.txt").exists() and (output / "meta.json").is_file()
    # A failing run with --overwrite leaves the previous dataset as it was.
    code, _, err = run_main(capsys, *args[:-6], "--min-user-interactions", "50", "--overwrite")
    assert code == 2 and (output / "meta.json").is_file()


def test_a_failure_while_writing_leaves_nothing(tmp_path, capsys, monkeypatch):
    from atjt_dist.data import layout

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(layout, "_write_arrays", disk_full)  # after the Parquet files are written
    output = tmp_path / "out"
    code, _, err = run_main(
        capsys,
        "--format",
        "seqtxt",
        "--input",
        FIXTURES / "seqtxt" / "sequences.txt",
        "--output",
        output,
        "--min-user-interactions",
        "1",
        "--candidates",
        "2",
        "--folds",
        "2",
    )
    assert_refused(code, err, output, "No space left on device")


def test_dataset_directory_is_readable_by_others_and_revisits_count_once(tmp_path):
    """A dataset directory gets the umask's permissions (not mkdtemp's private 0700), and a
    user's repeated items count once when checking that enough negatives exist."""
    import os
    import stat

    import numpy as np
    import pyarrow as pa

    from atjt_dist.data.layout import DatasetContent, write_dataset

    # one user revisits 2 items 40 times: 80 interactions but only 2 distinct items of 10
    seq = np.array([1, 2] * 40 + [3, 4, 5], dtype=np.int32)
    offsets = np.array([0, 80, 83], dtype=np.int64)
    old = os.umask(0o022)
    try:
        out = write_dataset(
            tmp_path / "ds",
            DatasetContent(
                seq_items=seq,
                seq_offsets=offsets,
                seq_times=np.arange(83),
                raw_users=pa.array(["a", "b"]),
                raw_items=pa.array([str(i) for i in range(1, 11)]),
                item_category=np.zeros(11, dtype=np.int32),
                category_names=pa.array([], type=pa.string()),
                meta={"format": "test"},
            ),
            num_candidates=8,
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
