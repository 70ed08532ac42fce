<#
.SYNOPSIS
  Builds the frozen agent on Windows: dist\trackssl-agent.exe (single file) and
  dist\trackssl-agent-folder\ (folder build), with a fixed hash seed and timestamps.
#>
[CmdletBinding()]
param([string] $Python = 'python')
$ErrorActionPreference = 'Stop'
Set-Location (Join-Path $PSScriptRoot '..')

# Fixed so that two builds of one commit hash the same.
$env:PYTHONHASHSEED = '0'
if (-not $env:SOURCE_DATE_EPOCH) {
    $epoch = (& git log -1 --format=%ct 2>$null)
    if ($LASTEXITCODE -ne 0 -or -not $epoch) { $epoch = '1767225600' }
    $env:SOURCE_DATE_EPOCH = "$epoch".Trim()
}

# PyInstaller's default work dir is .\build, which holds our packaging inputs.
& $Python -m PyInstaller --noconfirm --clean --log-level WARN `
    --distpath dist --workpath dist\.work pyinstaller.spec
if ($LASTEXITCODE -ne 0) { throw "PyInstaller failed ($LASTEXITCODE)" }
Remove-Item -Recurse -Force dist\.work

Get-Item dist\trackssl-agent.exe | Format-Table Name, Length
& dist\trackssl-agent.exe --version
if ($LASTEXITCODE -ne 0) { throw "--version failed ($LASTEXITCODE)" }
