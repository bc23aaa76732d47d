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


def test_a_package_put_back_after_a_checkout_is_not_dropped_by_the_next_checkout(tmp_path):
    """APRIL-GAN bundles its own ``open_clip``: its import sets the installed one aside and puts it back.
    A later checkout with a folder of that name (MuSc's ``models/backbone/open_clip``) must not drop the
    installed one, whose registry the project's code still holds."""
    installed_folder, first, second = tmp_path / "site", tmp_path / "first", tmp_path / "second"
    for folder, value in ((installed_folder, "installed"), (first, "first"), (second, "second")):
        (folder / "bundled_pkg_for_test").mkdir(parents=True)
        (folder / "bundled_pkg_for_test" / "__init__.py").write_text(f"VALUE = {value!r}\n")
    sys.path.insert(0, str(installed_folder))
    try:
        import bundled_pkg_for_test as installed

        sys.modules.pop("bundled_pkg_for_test")  # set aside, as aprillab.import_official does
        try:
            with official_imports(first):
                import bundled_pkg_for_test as bundled
        finally:
            sys.modules["bundled_pkg_for_test"] = installed
        with official_imports(second):
            pass
        assert bundled.VALUE == "first"
        assert sys.modules["bundled_pkg_for_test"] is installed
    finally:
        sys.path.remove(str(installed_folder))
        sys.modules.pop("bundled_pkg_for_test", None)
