<#
.SYNOPSIS
  Builds the frozen agent on Windows: dist\trackssl-agent.exe (single file) and
  dist\trackssl-agent-folder\ (folder build), with a fixed hash seed and timestamps, from a
  fresh clone with nothing but Python 3.11+ and git.
.DESCRIPTION
  The build runs in its own virtual environment (.build-venv\, gitignored) holding exactly
  the pinned runtime and build dependencies of build\requirements-build.txt, checked against
  their hashes; no test tools. It is made on first use and again whenever the lock file or
  the interpreter changes.
.PARAMETER Python
  The interpreter the build environment is made from (default: python).
.PARAMETER BuildVenv
  Where the build environment lives (default: .build-venv).
#>
[CmdletBinding()]
param([string] $Python = 'python', [string] $BuildVenv = '.build-venv')
$ErrorActionPreference = 'Stop'
Set-Location (Join-Path $PSScriptRoot '..')
$lock = 'build\requirements-build.txt'
$venvPython = Join-Path $BuildVenv 'Scripts\python.exe'

# What the environment was made from: a new lock or another interpreter means a new one.
# (No quotes inside the Python code: PowerShell 5 and 7 pass embedded quotes differently.)
$stamp = & $Python -c 'import hashlib, pathlib, sys; print(sys.base_prefix, sys.version.split()[0], hashlib.sha256(pathlib.Path(sys.argv[1]).read_bytes()).hexdigest())' $lock
if ($LASTEXITCODE -ne 0) { throw "$Python could not read $lock ($LASTEXITCODE)" }
$stampFile = Join-Path $BuildVenv '.lock-stamp'
$current = if (Test-Path $stampFile) { (Get-Content -Raw $stampFile).Trim() } else { '' }
if (-not (Test-Path $venvPython) -or $current -ne "$stamp".Trim()) {
    Write-Host "build-binary: making the build environment $BuildVenv from $lock"
    & $Python -m venv --clear $BuildVenv
    if ($LASTEXITCODE -ne 0) { throw "venv failed ($LASTEXITCODE)" }
    # --only-binary: an sdist would be built with whatever build tools the index serves
    # today. With dependencies resolved (no --no-deps), pip also refuses a lock that misses one.
    & $venvPython -m pip install --quiet --disable-pip-version-check --require-hashes `
        --only-binary :all: -r $lock
    if ($LASTEXITCODE -ne 0) { throw "installing $lock failed ($LASTEXITCODE)" }
    Set-Content -Path $stampFile -Value "$stamp".Trim() -Encoding ascii
}
# The agent itself, without dependencies (pinned above) and without an isolated build
# environment (that would fetch an unpinned setuptools): the lock's setuptools builds it.
# setuptools packs whatever its build dir holds, a module since moved or deleted included:
# start that dir empty.
if (Test-Path .setuptools-build) { Remove-Item -Recurse -Force .setuptools-build }
& $venvPython -m pip install --quiet --disable-pip-version-check --no-deps `
    --no-build-isolation --force-reinstall .
if ($LASTEXITCODE -ne 0) { throw "installing the agent failed ($LASTEXITCODE)" }

# Fixed so that two builds of one commit hash the same.
$env:PYTHONHASHSEED = '0'
if (-not $env:SOURCE_DATE_EPOCH) {
    $epoch = (& git log -1 --format=%ct 2>$null)
    if ($LASTEXITCODE -ne 0 -or -not $epoch) { $epoch = '1767225600' }
    $env:SOURCE_DATE_EPOCH = "$epoch".Trim()
}

# PyInstaller's default work dir is .\build, which holds our packaging inputs.
& $venvPython -m PyInstaller --noconfirm --clean --log-level WARN `
    --distpath dist --workpath dist\.work pyinstaller.spec
if ($LASTEXITCODE -ne 0) { throw "PyInstaller failed ($LASTEXITCODE)" }
Remove-Item -Recurse -Force dist\.work

Get-Item dist\trackssl-agent.exe, dist\trackssl-agent-folder\trackssl-agent.exe |
    Format-Table Name, Length
foreach ($exe in 'dist\trackssl-agent.exe', 'dist\trackssl-agent-folder\trackssl-agent.exe') {
    & $exe --version
    if ($LASTEXITCODE -ne 0) { throw "$exe --version failed ($LASTEXITCODE)" }
}
