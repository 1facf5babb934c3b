"""The sliced kernel client: its waits, and a widget notebook executed headless with it."""

import asyncio
from queue import Empty

import nbformat
import pytest
from jupyter_client.channels import AsyncZMQSocketChannel

from minibayeslora import notebook_run


def _channel_with(monkeypatch, outcomes):
    """A SlicedShellChannel whose underlying single wait pops ``outcomes`` (Empty, or a message) and records its timeouts."""
    waits = []

    async def one_wait(self, timeout=None):
        waits.append(timeout)
        outcome = outcomes.pop(0)
        if outcome is Empty:
            raise Empty
        return outcome

    monkeypatch.setattr(AsyncZMQSocketChannel, "get_msg", one_wait)
    return notebook_run.SlicedShellChannel.__new__(notebook_run.SlicedShellChannel), waits


def test_a_wait_without_timeout_retries_in_slices_until_a_message(monkeypatch):
    channel, waits = _channel_with(monkeypatch, [Empty, Empty, {"msg": 1}])
    assert asyncio.run(channel.get_msg(timeout=None)) == {"msg": 1}
    assert waits == [notebook_run.SLICE_SECONDS] * 3


def test_a_wait_with_a_timeout_gives_up_at_its_deadline(monkeypatch):
    channel, waits = _channel_with(monkeypatch, [Empty] * 10)
    with pytest.raises(Empty):
        asyncio.run(channel.get_msg(timeout=0.3))
    assert len(waits) == 1 and waits[0] <= 0.3       # shorter than a slice: one wait, then Empty


def test_a_widget_notebook_runs_headless_with_the_sliced_client():
    from nbclient import NotebookClient
    from traitlets.config import Config

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import ipywidgets as widgets\nimport matplotlib.pyplot as plt\n"
                                  "def show(k):\n    plt.plot([0, k]); plt.show()\n"
                                  "widgets.interactive(show, k=widgets.IntSlider(value=2, min=1, max=3))"),
        nbformat.v4.new_code_cell("print('after the widget')"),
    ])
    config = Config()
    config.AsyncKernelManager.client_class = "minibayeslora.notebook_run.SlicedKernelClient"
    client = NotebookClient(nb, config=config, timeout=120, kernel_name="python3")
    with client.setup_kernel():
        assert isinstance(client.kc.shell_channel, notebook_run.SlicedShellChannel)
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
    assert nb.cells[1].outputs[0]["text"] == "after the widget\n"
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in nb.cells[0].outputs)
