"""Two official checkouts with the same top-level module name import their own code in one process."""

import sys

from bench.parity.official import official_imports


def test_a_second_checkout_gets_its_own_module_of_a_clashing_name(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, value in ((first, 1), (second, 2)):
        folder.mkdir()
        (folder / "clash_module_for_test.py").write_text(f"VALUE = {value}\n")
    try:
        with official_imports(first):
            import clash_module_for_test as one
        with official_imports(second):
            import clash_module_for_test as two
        assert (one.VALUE, two.VALUE) == (1, 2)
    finally:
        sys.modules.pop("clash_module_for_test", None)
