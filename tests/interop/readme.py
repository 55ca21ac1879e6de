# pyright: basic
# (basic, not strict: the seed README's examples are untyped on purpose.)
"""The seed README's AMQP consumer and RPC server, as written, for farine.

The same classes as seed/readme.py2, which the seed runs beside them. The RPC server is
named as the README's client calls it (`myotherservice`).
"""

from __future__ import annotations

import farine.amqp
import farine.rpc


class Consume(object):  # noqa: UP004  # as the README writes it
    @farine.amqp.consume(exchange="publish", routing_key="routing_key")
    def consume_dummy(self, body, message):
        """
        :param body: The message's data.
        :type body: dict
        :param message: Message class.
        :type message: kombu.message.Message
        """
        message.ack()


class Myotherservice(object):  # noqa: UP004
    @farine.rpc.method()
    def dummy(self, *args, **kwargs):
        return True
