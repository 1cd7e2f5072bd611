"""The load: workloads (synthetic, dataset, ShareGPT) turned into requests, the asyncio
generator that sends them and times every token, and the request log it writes."""
