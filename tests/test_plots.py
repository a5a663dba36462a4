import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from lightweight import plots  # noqa: E402


def test_bar_chart_labels_values():
    plots.use_style()
    ax = plots.bar_chart(["FP32", "INT8"], [4.0, 1.0], fmt="{:.1f} MB", log=True)
    assert [t.get_text() for t in ax.texts] == ["4.0 MB", "1.0 MB"] and ax.get_yscale() == "log"
    plt.close("all")
    with pytest.raises(ValueError, match="differ in length"):
        plots.bar_chart(["a"], [1.0, 2.0])


def test_curves_draw_one_line_per_series_and_baseline():
    ax = plots.curves([0.1, 0.5], {"magnitude": [90, 80], "wanda": [95, 90]}, baseline=98.0)
    assert len(ax.lines) == 3 and [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["magnitude", "wanda"]
    plt.close("all")
    with pytest.raises(ValueError, match="has 1 points"):
        plots.curves([1, 2], {"a": [1]})
