"""System tests: the real ``streamd`` process (signals, crashes, CLI exit codes)."""
