from tests.support.mail import google, graph, mail, start_gateway

__all__ = ["google", "graph", "mail", "start_gateway"]
