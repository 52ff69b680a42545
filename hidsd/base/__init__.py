"""The ground floor: errors, asyncio helpers, the exec shim, logging, host facts, storage
health. Imports nothing else of the package."""
