"""Raw-format readers: hand-written fixtures of each syntax, and the real files when present."""

from __future__ import annotations

import ast
import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from atjt_dist.data.formats import FormatOptions, PrepareError, RawInteractions, read_raw
from atjt_dist.data.formats.amazon import AMAZON_2014_ASIN, _unquote_python_strings, last_category_literals
from atjt_dist.data.formats.ids import IdEncoder, encode_ints
from atjt_dist.data.formats.rating_lines import read_rating_lines
from atjt_dist.data.formats.streaming import iter_line_blocks, read_delimited

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "raw"
SHARED_DATA = Path(os.environ.get("ATJT_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared(*parts: str) -> Path:
    """A real dataset file under ../shared/data, or skip with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real dataset file {path} is not available (set ATJT_SHARED_DATA)")
    return path


def fixture(*parts: str) -> Path:
    return FIXTURES.joinpath(*parts)


def categories_by_item(raw: RawInteractions) -> dict[str, str | None]:
    names = raw.category_names.to_pylist()
    return {str(item): (names[c] if c >= 0 else None) for item, c in zip(raw.raw_items.to_pylist(), raw.item_category)}


def rows(raw: RawInteractions) -> list[tuple]:
    """(raw user, raw item, time) per row, in file order."""
    users, items = raw.raw_users.to_pylist(), raw.raw_items.to_pylist()
    return [(str(users[u]), str(items[i]), int(t)) for u, i, t in zip(raw.user, raw.item, raw.time)]


# ---------------------------------------------------------------------------------------------
# movielens
# ---------------------------------------------------------------------------------------------


def test_movielens_100k_fixture_reads_rows_and_first_flagged_genre():
    raw = read_raw("movielens", [fixture("ml-100k", "u.data"), fixture("ml-100k", "u.item")])
    assert rows(raw)[:3] == [("3", "10", 881000900), ("1", "10", 891000000), ("1", "20", 878000000)]
    assert raw.rating.tolist() == [4.0, 3.0, 1.0, 2.0, 5.0, 4.0]
    # Toy Story flags Animation, Children's, Comedy: the first flagged is Animation.
    assert categories_by_item(raw) == {"10": "Animation", "20": "Action", "30": "unknown"}
    assert [s.role for s in raw.sources] == ["interactions (u.data)", "items (u.item)"]


def test_movielens_1m_dat_handles_colons_in_titles_and_latin1():
    raw = read_raw("movielens", [fixture("ml-1m", "ratings.dat"), fixture("ml-1m", "movies.dat")])
    assert raw.raw_items.to_pylist() == [661, 914, 1193, 1287, 2355, 3408]  # numeric order
    assert len(raw.user) == 11
    assert raw.rating[8] == 3.5
    cats = categories_by_item(raw)
    assert cats["3408"] == "Drama"  # title "Erin Brockovich: Les Misérables" in latin-1
    assert cats["661"] == "Animation" and cats["1287"] == "Action"


def test_movielens_20m_csv_quoted_titles_and_no_genres():
    raw = read_raw("movielens", [fixture("ml-20m", "ratings.csv"), fixture("ml-20m", "movies.csv")])
    assert rows(raw)[5:8] == [("2", "3", 975000100), ("2", "29", 975000100), ("2", "2", 975000000)]
    cats = categories_by_item(raw)
    assert cats == {"2": "Adventure", "3": "Comedy", "29": "Adventure", "32": None, "47": "Musical", "50": "Crime"}


def test_movielens_role_is_told_by_content_not_name(tmp_path):
    renamed = tmp_path / "whatever.txt"
    shutil.copy(fixture("ml-1m", "ratings.dat"), renamed)
    raw = read_raw("movielens", [renamed])
    assert raw.sources[0].role == "interactions (ratings.dat)"
    (tmp_path / "tags.dat").write_text("1::2::funny tag::978300760\n")
    with pytest.raises(PrepareError, match="not a MovieLens file"):
        read_raw("movielens", [tmp_path / "tags.dat"])


def _arrow_path_blocks(path: Path) -> tuple[np.ndarray, ...]:
    batches = list(
        read_delimited(
            path,
            columns={"userId": pa.int64(), "movieId": pa.int64(), "rating": pa.float64(), "timestamp": pa.int64()},
            separator=",",
            check=lambda line: None,
        )
    )
    table = pa.Table.from_batches(batches)
    return tuple(table.column(c).to_numpy() for c in ("userId", "movieId", "rating", "timestamp"))


def test_numeric_fast_path_equals_pyarrow_on_awkward_but_valid_lines(tmp_path):
    rng = np.random.default_rng(0)
    n = 5000
    user = rng.integers(-5, 10**12, n)
    item = rng.integers(0, 10**6, n)
    rating = rng.choice([0.5, 1.0, 3.25, 4.125, 5.0, 0.1, 2.7], n)
    stamp = rng.integers(-(10**9), 10**16, n)
    lines = [f"{u},{i},{float(r)!r},{t}" for u, i, r, t in zip(user, item, rating, stamp)]
    lines[10] = lines[10].replace(".0,", ",", 1)  # integer-looking rating
    body = "userId,movieId,rating,timestamp\r\n" + "\r\n".join(lines[:100]) + "\n\n" + "\n".join(lines[100:])
    path = tmp_path / "ratings.csv"
    path.write_text(body)  # CRLF lines, a blank line, and no newline at the end
    fast = read_rating_lines(path, b",", True, block_bytes=4096)  # many blocks
    assert fast is not None
    got = tuple(np.concatenate([getattr(b, k) for b in fast]) for k in ("user", "item", "rating", "time"))
    for a, b in zip(got, _arrow_path_blocks(path)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got[0], user)


def test_numeric_fast_path_declines_quoted_numbers_and_pyarrow_reads_them(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text('userId,movieId,rating,timestamp\n"1",2,3.5,100\n1,3,1e0,99\n1,4,2,98\n1,5,2,97\n1,6,2,96\n')
    assert read_rating_lines(path, b",", True, 1 << 20) is None
    raw = read_raw("movielens", [path])
    assert raw.rating.tolist() == [3.5, 1.0, 2.0, 2.0, 2.0]
    path.write_text("userId,movieId,rating,timestamp\n9223372036854775807,2,3.5,100\n")  # 19 digits
    assert read_rating_lines(path, b",", True, 1 << 20) is None
    assert read_raw("movielens", [path]).raw_users.to_pylist() == [2**63 - 1]


def test_ml100k_real_files(tmp_path):
    raw = read_raw("movielens", [shared("ml-100k", "u.data"), shared("ml-100k", "u.item")])
    assert (len(raw.user), len(raw.raw_users), len(raw.raw_items)) == (100_000, 943, 1_682)
    assert raw.raw_users.to_pylist() == list(range(1, 944))
    assert int(raw.time.min()) == 874724710 and int(raw.time.max()) == 893286638  # README range
    # The README's rating histogram sums to 100,003: it counted the 3 fake user-0 rows of the
    # Spark-course copy (ratings 5, 5, 1) that were removed from this file.
    assert np.bincount(raw.rating.astype(int)).tolist()[1:] == [6110, 11370, 27145, 34174, 21201]
    cats = categories_by_item(raw)
    assert cats["1"] == "Animation" and cats["2"] == "Action" and len(raw.category_names) == 19


# ---------------------------------------------------------------------------------------------
# amazon
# ---------------------------------------------------------------------------------------------


def test_amazon_2014_reviews_with_python_literal_metadata():
    raw = read_raw("amazon", [fixture("amazon2014", "reviews_Beauty_5.json"), fixture("amazon2014", "meta_Beauty.json")])
    assert len(raw.user) == 7 and raw.raw_users.to_pylist() == ["A1REVIEWERAAAA", "A2REVIEWERBBBB", "A3REVIEWERCCCC"]
    assert raw.rating.tolist() == [1.0, 3.0, 5.0, 4.0, 4.0, 1.0, 2.0]
    assert categories_by_item(raw) == {
        "0000000101": "Creams, Gels & Lotions",
        "0000000202": "Shaving",  # last element of the LAST path
        "0000000303": "Eyeliner",
        "B0000FRAG1": "Rock 'n' \"Roll\"",  # escaped quotes of a Python literal
        "B0000NOCAT": None,  # [[]]: parsed by the literal fallback
    }
    assert [s.role for s in raw.sources] == ["interactions (reviews JSON)", "items (2014 metadata)"]


def test_amazon_2014_regex_agrees_with_literal_eval_on_every_line():
    lines = [line for line in fixture("amazon2014", "meta_Beauty.json").read_text().splitlines() if line.strip()]
    text = pa.array(lines, pa.large_string())
    asin = pc.struct_field(pc.extract_regex(text, AMAZON_2014_ASIN), "asin").to_pylist()
    last = _unquote_python_strings(last_category_literals(text)).to_pylist()
    for line, a, c in zip(lines, asin, last):
        obj = ast.literal_eval(line)
        assert a == obj["asin"]
        paths = obj.get("categories")
        if c is not None:  # the regex's misses are parsed by the literal fallback
            assert c == paths[-1][-1]
    assert sum(c is not None for c in last) == 4


def test_amazon_csv_column_order_is_explicit(tmp_path):
    path = fixture("amazon2014", "ratings_Beauty.csv")
    with pytest.raises(PrepareError, match="--amazon-csv-order"):
        read_raw("amazon", [path])
    user_first = read_raw("amazon", [path], FormatOptions(amazon_csv_order="user-first"))
    item_first = read_raw("amazon", [path], FormatOptions(amazon_csv_order="item-first"))
    assert user_first.raw_users.to_pylist() == item_first.raw_items.to_pylist() == ["A1REVIEWERAAAA", "A2REVIEWERBBBB"]
    assert user_first.sources[0].role == "interactions (ratings CSV, user-first)"


def test_amazon_2018_gzipped_reviews_and_json_metadata(tmp_path):
    gz = tmp_path / "reviews_2018.json.gz"
    gz.write_bytes(gzip.compress(fixture("amazon2018", "reviews_2018.json").read_bytes()))
    raw = read_raw("amazon", [gz, fixture("amazon2018", "meta_2018.json")])
    assert rows(raw) == [
        ("AFASHIONFANAAA", "B0SHORTS01", 1441324800),
        ("AFASHIONFANAAA", "B0SHORTS02", 1441324800),
        ("AFASHIONFANBBB", "B0SHORTS01", 1414368000),
        ("AFASHIONFANBBB", "B0SHORTS01", 1414368000),
    ]
    # First metadata line of an item wins; an empty category list is no category.
    assert categories_by_item(raw) == {"B0SHORTS01": "Shorts", "B0SHORTS02": None}


def test_amazon_2018_item_first_csv_fixture():
    raw = read_raw("amazon", [fixture("amazon2018", "ratings_2018.csv")], FormatOptions(amazon_csv_order="item-first"))
    assert rows(raw)[0] == ("AFASHIONFANAAA", "B0SHORTS01", 1441324800)


def test_magazine_real_csv_counts():
    raw = read_raw(
        "amazon",
        [shared("amazon2018-magazine-fashion", "Magazine_Subscriptions.csv")],
        FormatOptions(amazon_csv_order="item-first"),
    )
    assert (len(raw.user), len(raw.raw_users), len(raw.raw_items)) == (89_689, 72_098, 2_428)
    assert np.all(raw.time % 86400 == 0)
    assert rows(raw)[0] == ("AH2IFH762VY5U", "B00005N7P0", 1005177600)  # README's example line


def test_fashion_real_gzipped_json_counts():
    raw = read_raw("amazon", [shared("amazon2018-magazine-fashion", "AMAZON_FASHION_5.json.gz")])
    assert (len(raw.user), len(raw.raw_users), len(raw.raw_items)) == (3_176, 406, 31)
    assert np.all(raw.time % 86400 == 0) and raw.rating.min() >= 1.0 and raw.rating.max() <= 5.0


# ---------------------------------------------------------------------------------------------
# yelp, seqtxt, table
# ---------------------------------------------------------------------------------------------


def test_yelp_both_date_syntaxes_and_first_category():
    raw = read_raw(
        "yelp",
        [fixture("yelp", "yelp_academic_dataset_review.json"), fixture("yelp", "yelp_academic_dataset_business.json")],
    )
    assert raw.time.tolist() == [1531001351, 1325604498, 1391558400, 1546300801, 1367901276, 1420329663]  # UTC
    assert raw.rating.tolist() == [3.0, 5.0, 3.0, 5.0, 4.0, 1.0]  # an integer star reads as 3.0
    cats = categories_by_item(raw)
    assert cats["b_cafe_000000000000001"] == "Restaurants" and cats["b_gym_0000000000000002"] is None  # null
    assert len(cats) == 4 and sum(c is not None for c in cats.values()) == 1


def test_seqtxt_positions_and_numeric_id_order():
    raw = read_raw("seqtxt", [fixture("seqtxt", "sequences.txt")])
    assert raw.raw_users.to_pylist() == ["1", "2", "3", "10"]  # numeric, not "10" < "2"
    assert raw.time[:7].tolist() == [0, 1, 2, 3, 4, 0, 1]
    assert rows(raw)[5:7] == [("2", "11", 0), ("2", "14", 1)]
    assert raw.rating is None and raw.time_unit == "position"


def test_seqtxt_repeated_user_names_both_lines(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_text("1 5 6\n2 7 8\n\n1 9 10\n")
    with pytest.raises(PrepareError, match=r"lines 1 and 4: user 1 has two sequences"):
        read_raw("seqtxt", [path])


def test_beauty_real_sequences():
    path = shared("amazon-beauty-s3rec", "Beauty.txt")
    raw = read_raw("seqtxt", [path])
    assert (len(raw.user), len(raw.raw_users), len(raw.raw_items)) == (198_502, 22_363, 12_101)
    first = path.read_text().splitlines()[1].split()  # "2 6 7 8 9 10 4 11"
    assert [r[1] for r in rows(raw) if r[0] == first[0]] == first[1:]


def _table_options(**kw) -> FormatOptions:
    return FormatOptions(user_col="user_id", item_col="item_id", time_col="ts", rating_col="score", category_col="genre", **kw)


def test_table_csv_and_parquet_read_the_same(tmp_path):
    csv_raw = read_raw("table", [fixture("table", "interactions.csv")], _table_options())
    parquet = tmp_path / "interactions.parquet"
    pq.write_table(pa.csv.read_csv(fixture("table", "interactions.csv")), parquet)
    pq_raw = read_raw("table", [parquet], _table_options())
    assert rows(csv_raw) == rows(pq_raw)
    assert csv_raw.time_unit == "us" and rows(csv_raw)[0] == ("u2", "i9", 1614592800 * 10**6)
    # i1's first row has an empty genre: the first non-empty one counts.
    assert categories_by_item(csv_raw) == categories_by_item(pq_raw) == {"i1": "pop", "i10": "rock", "i7": "rock", "i9": "jazz"}


def test_table_integer_ids_and_times_from_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"user": [10, 2, 2], "item": [7, 7, 300], "time": [5, 3, 4]}), path)
    raw = read_raw("table", [path])
    assert raw.raw_users.to_pylist() == [2, 10] and raw.time_unit == "as given"
    pq.write_table(pa.table({"user": [1.5], "item": [7], "time": [5]}), path)
    with pytest.raises(PrepareError, match="user ids must be integers or strings"):
        read_raw("table", [path])


def test_table_missing_column_is_named(tmp_path):
    with pytest.raises(PrepareError, match=r"missing column\(s\) 'stamp'"):
        read_raw(
            "table",
            [fixture("table", "interactions.csv")],
            FormatOptions(user_col="user_id", item_col="item_id", time_col="stamp"),
        )


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, files, options",
    [
        ("movielens", [("ml-1m", "ratings.dat"), ("ml-1m", "movies.dat")], {}),
        ("movielens", [("ml-20m", "ratings.csv"), ("ml-20m", "movies.csv")], {}),
        ("amazon", [("amazon2014", "reviews_Beauty_5.json"), ("amazon2014", "meta_Beauty.json")], {}),
        ("yelp", [("yelp", "yelp_academic_dataset_review.json")], {}),
        ("seqtxt", [("seqtxt", "sequences.txt")], {}),
    ],
)
def test_block_size_does_not_change_what_is_read(fmt, files, options):
    paths = [fixture(*f) for f in files]
    big = read_raw(fmt, paths, FormatOptions(**options))
    # Blocks far smaller than the files, but (as pyarrow needs) longer than any line.
    small = read_raw(fmt, paths, FormatOptions(block_bytes=1024 if fmt in ("amazon", "yelp") else 160, **options))
    assert rows(big) == rows(small)
    assert categories_by_item(big) == categories_by_item(small)


def test_iter_line_blocks_numbers_lines_and_strips_line_ends(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_bytes(b"a b\r\n\nccc\n" + b"d" * 50 + b"\nlast")
    got = [(first, lines.to_pylist()) for first, lines in iter_line_blocks(path, block_bytes=8)]
    flat = [line for _, lines in got for line in lines]
    assert flat == [b"a b", b"", b"ccc", b"d" * 50, b"last"]
    assert got[0][0] == 1 and [first for first, _ in got] == sorted({first for first, _ in got})


def test_id_encoder_orders_numbers_numerically_and_strings_bytewise():
    enc = IdEncoder("user")
    enc.add(pa.array(["10", "9"]), "x")
    enc.add(pa.array(["9", "100"]), "x")
    codes, vocab = enc.finish()
    assert vocab.to_pylist() == ["9", "10", "100"] and codes.tolist() == [1, 0, 0, 2]
    enc.add(pa.array(["b", "B", "a"]), "x")
    codes, vocab = enc.finish()
    assert vocab.to_pylist() == ["B", "a", "b"] and codes.tolist() == [2, 0, 1]


@pytest.mark.parametrize("span", [100, 10**15])  # direct-address table, then the sort fallback
def test_encode_ints_both_ways(span):
    values = np.array([span, 3, -2, span, 3], dtype=np.int64)
    codes, vocab = encode_ints(values)
    assert vocab.tolist() == [-2, 3, span] and codes.tolist() == [2, 1, 0, 2, 1]


# ---------------------------------------------------------------------------------------------
# Bad lines are named
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, text, fmt, options, message",
    [
        ("u.data", "1\t2\t3\t4\n1\t3\t3\t5\n1\t4\t3\n", "movielens", {}, r"u.data, line 3: expected 4 fields"),
        (
            "u.data",
            "1\t2\t3\t4\n99999999999999999999\t3\t3\t5\n",
            "movielens",
            {},
            r"line 2: user id 99999999999999999999 does not fit",
        ),
        (
            "ratings.csv",
            "userId,movieId,rating,timestamp\n1,2,3.5,10\n1,x,4,11\n",
            "movielens",
            {},
            r"line 3: item id is not an integer: 'x'",
        ),
        (
            "r.json",
            '{"reviewerID": "a", "asin": "b", "unixReviewTime": 1}\n{"reviewerID": "a", "unixReviewTime": 2}\n',
            "amazon",
            {},
            r"r.json, line 2: no 'asin' value",
        ),
        (
            "r.json",
            '{"reviewerID": "a", "asin": "b", "unixReviewTime": 1}\n{"reviewerID": "a", "asin": "c", "unixReviewTime": 2\n',
            "amazon",
            {},
            r"line 2: not valid JSON",
        ),
        (
            "review.json",
            '{"review_id": "r", "user_id": "u", "business_id": "b", "date": "2014-02-05"}\n'
            '{"review_id": "s", "user_id": "u", "business_id": "b", "date": "05/02/2014"}\n',
            "yelp",
            {},
            r"line 2: date '05/02/2014'",
        ),
        ("r.csv", "u,i,5.0,100\nu,j,5.0\n", "amazon", {"amazon_csv_order": "user-first"}, r"line 2: expected 4 fields"),
    ],
)
def test_bad_lines_are_named(tmp_path, name, text, fmt, options, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PrepareError, match=message):
        read_raw(fmt, [path], FormatOptions(**options))


def test_python_literal_metadata_bad_line_is_named(tmp_path):
    reviews = fixture("amazon2014", "reviews_Beauty_5.json")
    meta = tmp_path / "meta.json"
    meta.write_text("{'asin': 'A', 'categories': [['x']]}\n{'asin': 'B', 'categories': [['y'], [}\n")
    with pytest.raises(PrepareError, match=r"meta.json, line 2: not a Python dict literal"):
        read_raw("amazon", [reviews, meta])
