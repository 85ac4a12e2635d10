"""`pibridge serve`: a converted OUT (in the real LeRobot) or an OpenPI checkpoint (on pibridge's JAX stack) behind
OpenPI's websocket policy protocol, so OpenPI's unmodified clients (openpi_client.WebsocketClientPolicy) drive it.

wire (msgpack-numpy frames, numpy + msgpack only), policy (client dict -> policy -> OpenPI's infer reply), server
(asyncio websockets). Importing this package imports neither jax nor torch.
"""
