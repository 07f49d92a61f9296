import base64
import html.parser
import os
import shutil

import numpy as np
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


def test_nonwhite_pixels_of_an_embedded_png(tmp_path):
    import matplotlib.pyplot as plt

    from experiments.render_check import nonwhite_pixels

    image = np.ones((100, 1040, 3))
    image[10:30, 100:300] = [0.1, 0.3, 0.8]                  # 20 x 200 coloured pixels
    plt.imsave(tmp_path / "a.png", image)
    assert nonwhite_pixels((tmp_path / "a.png").read_bytes()) == pytest.approx(4000 * 0.25)  # shown at half size


@pytest.mark.skipif(shutil.which("chromium") is None and not os.environ.get("CHROMIUM"),
                    reason="headless Chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(micro_run, tmp_path):
    from experiments.render_check import check

    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    report.write_report(run)
    result = check(run)
    assert result["ok"] and result["figures_in_html"] >= 1 and (run / "report.png").stat().st_size > 10_000
    assert result["figure_pixels_drawn"] > 0.5 * result["figure_pixels_expected"] > 0
    broken = (run / "report.html").read_text().replace("base64,", "base64,AAAA", 1)   # one undecodable figure
    (run / "report.html").write_text(broken)
    again = check(run)
    assert not again["ok"] and again["figures_undecodable"] == 1 and again["figure_pixels_drawn"] < result["figure_pixels_drawn"]
