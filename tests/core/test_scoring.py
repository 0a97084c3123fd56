import pytest

from sdft_core.evaluation.scoring import (
    extract_choice_letter,
    extract_number,
    format_call,
    match_function_call,
    multiple_choice,
    parse_function_call,
    short_answer,
)

CHOICES = ["proteins", "carotenoids", "genes", "nucleotides"]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("So the answer is D. nucleotides", "D"),
        ("The answer is (C).", "C"),
        ("Answer: B", "B"),
        ("**Answer:** **A**", "A"),
        ("answer is D", "D"),
        ("C. genes", "C"),
        ("(B) carotenoids, because they absorb light.", "B"),
        ("First I thought A. proteins, but the answer is D. nucleotides.", "D"),
        ("Nucleotides are the units that get inserted.", "D"),  # no letter: the one option named in the text
        ("the answer is a nucleotide", None),  # lower-case "a" is an article, not option A ("nucleotide" != option)
        ("A. proteins\nB. carotenoids\nC. genes\nD. nucleotides", "A"),  # echoing the options commits to the first line
        ("I am not sure.", None),
        ("", None),
        ("The answer is E.", None),  # not one of four options
        ("Both genes and proteins matter.", None),  # two options named: no commitment
    ],
)
def test_extract_choice_letter(text, expected):
    assert extract_choice_letter(text, CHOICES) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("She earns 9 * 2 = $18 every day. The answer is 18.", 18.0),
        ("Total: 1,234 apples", 1234.0),
        ("It drops to -3.5 degrees, then 2 more", 2.0),
        ("The answer is 42, not 7.", 42.0),
        ("no digits here", None),
    ],
)
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_short_answer_metrics():
    result = short_answer("The regatta predates The Game by 23 years.", ["23 years", "23"])
    # normalised: "regatta predates game by 23 years" (6 tokens) vs "23 years": precision 1/3, recall 1
    assert result == {"exact": 0.0, "contains": 1.0, "f1": pytest.approx(0.5)}
    assert short_answer("Denver Broncos", ["the Denver Broncos"])["exact"] == 1.0
    assert short_answer("", ["Paris"]) == {"exact": 0.0, "contains": 0.0, "f1": 0.0}
    assert short_answer("2300 years", ["23"])["contains"] == 0.0  # whole words only


GROUND_TRUTH = [{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}]


@pytest.mark.parametrize(
    "text,ok,reason",
    [
        ("calculate_triangle_area(base=10, height=5)", True, "match"),
        ("calculate_triangle_area(height=5, base=10, unit='units')", True, "match"),  # order-free, optional given
        ("```python\ncalculate_triangle_area(base=10.0, height=5)\n```", True, "match"),  # fence, int == float
        ("[calculate_triangle_area(base=10, height=5)]", True, "match"),  # BFCL's list form
        ("Sure! Here is the call:\ncalculate_triangle_area(base=10, height=5)", True, "match"),
        ("calculate_triangle_area(base=10, height=5, unit='Units')", True, "match"),  # case-insensitive strings
        ("calculate_triangle_area(base=10)", False, "missing argument height"),
        ("calculate_triangle_area(base=10, height=6)", False, "argument height=6 not among"),
        ("calculate_triangle_area(base=10, height=5, color='red')", False, "unexpected argument color"),
        ("calculate_triangle_area(10, 5)", False, "positional arguments"),
        ("triangle_area(base=10, height=5)", False, "called triangle_area"),
        ("calculate_triangle_area(base=x, height=5)", False, "argument base=<unparsable>"),
        ("def calculate_triangle_area(base, height):\n    return base * height / 2", False, "no function call"),
        ("I cannot help with that.", False, "no function call found"),
        ("calculate_triangle_area(base=10, height=5", False, "no function call found"),  # truncated output
    ],
)
def test_function_call_match(text, ok, reason):
    matched, why = match_function_call(text, GROUND_TRUTH)
    assert matched is ok and why.startswith(reason)


def test_function_call_values_and_names():
    truth = [{"math.hypot": {"x": [4], "y": [5], "z": ["", 0]}}]
    assert match_function_call("math.hypot(x=4, y=5)", truth)[0]
    assert match_function_call("math.hypot(x=4, y=5, z=0)", truth)[0]
    assert not match_function_call("hypot(x=4, y=5)", truth)[0]
    lists = [{"f": {"values": [[1, 2, 3]], "flag": [True]}}]
    assert match_function_call("f(values=[1, 2, 3], flag=True)", lists)[0]
    assert not match_function_call("f(values=[1, 2], flag=True)", lists)[0]
    assert not match_function_call("f(values=[1, 2, 3], flag=1)", lists)[0]  # a bool is not an int
    assert parse_function_call("print(math.sqrt(x=4))")[0] == "math.sqrt"


def test_format_call_round_trips_through_the_matcher():
    call = format_call(GROUND_TRUTH)
    assert call == "calculate_triangle_area(base=10, height=5, unit='units')"
    assert match_function_call(call, GROUND_TRUTH)[0]
    optional_first = [{"f": {"a": [1], "b": ["", "x"]}}]
    assert format_call(optional_first) == "f(a=1)"


def test_multiple_choice_accuracy_and_length_normalisation():
    # choice 1 has the higher total log-probability; choice 0 the higher per character
    result = multiple_choice([-4.0, -3.0], [" a very long answer here", " no"], gold=0)
    assert result["acc"] == 0.0 and result["acc_norm"] == 1.0
    assert result["choice"] == 1 and result["choice_norm"] == 0


def test_nested_dict_arguments_follow_bfcl_allowed_values():
    truth = [
        {
            "db_fetch": {
                "conditions": [
                    {"department": ["Science"], "school": ["Bluebird HS", "Bluebird High"], "year": ["", 2024]}
                ]
            }
        }
    ]
    assert format_call(truth) == "db_fetch(conditions={'department': 'Science', 'school': 'Bluebird HS'})"
    assert match_function_call(format_call(truth), truth)[0]
    assert match_function_call(
        "db_fetch(conditions={'department': 'science', 'school': 'Bluebird High', 'year': 2024})", truth
    )[0]
    assert not match_function_call("db_fetch(conditions={'department': 'Art', 'school': 'Bluebird HS'})", truth)[0]
    assert not match_function_call("db_fetch(conditions={'department': 'Science'})", truth)[0]  # school required
