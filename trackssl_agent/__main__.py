"""Entry point for ``python -m trackssl_agent`` and the frozen executable."""

from trackssl_agent.cli import main

if __name__ == "__main__":
    main()
