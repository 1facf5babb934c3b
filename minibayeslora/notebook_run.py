"""A kernel client for running the notebooks headless (``make test``, ``make course``) without a known hang.

While a cell that shows a widget runs, nbclient (the engine of ``jupyter nbconvert --execute``) plays the part of
the browser for the widget's Output area: from the task that reads IOPub it *sends* comm messages on the shell
socket, while its main task waits on that same socket for the cell's reply. A send on a ZeroMQ socket can swallow
the socket's "readable" notification, so a reply that arrives at that moment is never noticed, and the run waits
for the cell's timeout, forever with ``timeout=-1`` (jupyter/nbclient#312). We saw it in notebooks 03 and 04.

``SlicedKernelClient`` waits for shell messages in slices of one second: each new wait checks the socket afresh, so
a missed notification costs at most a second. Use it with
``jupyter nbconvert --execute --AsyncKernelManager.client_class=minibayeslora.notebook_run.SlicedKernelClient``.
"""

from __future__ import annotations

import time
from queue import Empty

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from traitlets import Type

SLICE_SECONDS = 1.0


class SlicedShellChannel(AsyncZMQSocketChannel):
    """``get_msg(timeout)`` as a series of waits of at most ``SLICE_SECONDS``, until a message or the timeout."""

    async def get_msg(self, timeout: float | None = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await super().get_msg(timeout=SLICE_SECONDS if left is None else min(SLICE_SECONDS, left))
            except Empty:
                if left is not None and left <= SLICE_SECONDS:
                    raise


class SlicedKernelClient(AsyncKernelClient):
    shell_channel_class = Type(SlicedShellChannel)
