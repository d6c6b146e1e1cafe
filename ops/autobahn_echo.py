"""Autobahn's echo server for ops/autobahn (Python 2.7, inside the suite's virtualenv).

The same protocol as `wstest -m echoserver`, bound to 127.0.0.1 only, and told the port the
public gateway is reached at: Autobahn refuses a Host header whose port is not its own, and
the edge forwards the client's Host unchanged.

Usage: python autobahn_echo.py LISTEN_PORT PUBLIC_PORT
"""
import sys

from twisted.internet import reactor

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahntestsuite.echo import EchoServerProtocol

listen_port, public_port = int(sys.argv[1]), int(sys.argv[2])
factory = WebSocketServerFactory("ws://127.0.0.1:%d" % listen_port, externalPort=public_port)
factory.protocol = EchoServerProtocol
reactor.listenTCP(listen_port, factory, interface="127.0.0.1")
reactor.run()
