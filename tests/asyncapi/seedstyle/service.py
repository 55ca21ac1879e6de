# pyright: basic
# (basic, not strict: the seed README's examples are untyped on purpose.)
"""baguette-messaging's README examples, in one module, for `farine asyncapi`.

The README's classes in its order, untyped as it writes them (in Python 3). The README
names several classes `Client` (and two `Server`); one module holds one class per name,
so the later ones carry the section they come from. The Database example is
`tests/seedapp`, as it needs a `models.py`.
"""

from __future__ import annotations

import farine.amqp
import farine.execute
import farine.rpc
import farine.stream


class Publish:
    @farine.amqp.publish(exchange="consume", routing_key="routing_key")
    def publish_dummy(self, publish):
        publish({"result": 0})


class Consume:
    @farine.amqp.consume(exchange="publish", routing_key="routing_key")
    def consume_dummy(self, body, message):
        message.ack()


class Server:
    @farine.rpc.method()
    def dummy(self, *args, **kwargs):
        return True


class Client:
    @farine.rpc.client("myotherservice")
    def dummy(self, rpc):
        return rpc.dummy()


class StreamServer:
    @farine.rpc.method()
    def dummy(self, *args, **kwargs):
        yield "a"
        yield "b"


class StreamClient:
    @farine.rpc.client("myotherservice")
    def dummy(self, rpc):
        return list(rpc.dummy(__stream__=True))


class HttpClient:
    @farine.stream.http()
    def listen_event(self, data):
        return True


class ExecuteClient:
    @farine.execute.method()
    def my_own_stuff(self):
        pass


class OverviewClient:
    @farine.stream.http()
    def get(self, data):
        return self.send(data)

    @farine.rpc.client("myotherservice")
    def send(self, rpc, data):
        return rpc.process(data)
