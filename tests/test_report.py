import base64
import html.parser
import shutil

import pytest

from dynamics.errors import OntogenyError
from experiments import report
from experiments.__main__ import cli


class _Collect(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.text = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_report_embeds_every_figure_and_the_headline_numbers(micro_run, tmp_path):
    root = tmp_path / "quick"
    shutil.copytree(micro_run, root / "pretrain")
    path = report.write_report(root)
    page = _Collect()
    page.feed(path.read_text())
    pngs = sorted((root / "pretrain" / "figures").glob("*.png"))
    assert len(page.images) == len(pngs) >= 1
    for src, png in zip(page.images, pngs):
        assert src.startswith("data:image/png;base64,")  # self-contained: no file links
        assert base64.b64decode(src.split(",", 1)[1]) == png.read_bytes()
    text = " ".join(page.text)
    assert "val_loss" in text and "saving 8 checkpoints" in text


def test_report_on_an_empty_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(OntogenyError, match="holds no finished run"):
        report.write_report(tmp_path)
    assert cli(["report", str(tmp_path)]) == 2
    assert "holds no finished run" in capsys.readouterr().err
