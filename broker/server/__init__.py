"""Running it: uvicorn, sockets, the splicing protocol, the HTTP guard, the internals check."""
