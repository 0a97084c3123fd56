import pytest

from sdft_core.names import InvalidName, check_skill_name
from sdft_core.skills import read_spec

REFUSED = ["../../x", "..", "a/b", "a\\b", "", "Science", "-x", "_x", "x" * 65, "sci ence", "sci.ence", "é", None, 3]


@pytest.mark.parametrize("name", ["science", "tool_use", "sql-2", "7b", "x" * 64])
def test_skill_names_that_are_accepted(name):
    assert check_skill_name(name, "test") == name


@pytest.mark.parametrize("name", REFUSED)
def test_names_that_could_leave_their_folder_or_break_a_path_are_refused(name):
    with pytest.raises(InvalidName, match="test: skill name .* is refused: a skill name is 1 to 64 characters"):
        check_skill_name(name, "test")


def test_a_skill_yaml_name_is_checked_before_it_names_any_output(tmp_path):
    folder = tmp_path / "sql"
    folder.mkdir()
    (folder / "skill.yaml").write_text("name: ../../outside\n")
    with pytest.raises(InvalidName, match=r"skill.yaml: name: skill name '../../outside' is refused"):
        read_spec(folder)
    (folder / "skill.yaml").write_text("scorer: short_answer\n")
    assert read_spec(folder).name == "sql"  # the folder's own name, when skill.yaml gives none
