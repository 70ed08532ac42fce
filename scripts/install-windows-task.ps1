<#
.SYNOPSIS
  Registers the Task Scheduler task that runs "trackssl-agent check-once" every 4 hours.

.DESCRIPTION
  Fills in build\windows\trackssl-agent-task.xml (or trackssl-agent-task.xml beside this
  script, as shipped in the release) and registers it, by default as SYSTEM. Creates the
  data folder (configuration, state, log), readable by SYSTEM and Administrators only since
  environment.txt holds the auth token, and writes a starter environment.txt if none exists.
  Run from an elevated PowerShell. Running it again replaces the task.

.EXAMPLE
  .\install-windows-task.ps1 -Executable 'C:\Program Files\TrackSSL\trackssl-agent.exe'
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)] [string] $Executable,
    [string] $DataDir = (Join-Path $env:ProgramData 'TrackSSL'),
    [string] $TaskName = 'TrackSSL Agent',
    # A service account (DOMAIN\name or a gMSA ending in $) instead of SYSTEM.
    [string] $User = 'S-1-5-18',
    [string] $Template = ''
)
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

function Find-Template {
    if ($Template) { return $Template }
    foreach ($candidate in @(
            (Join-Path $PSScriptRoot 'trackssl-agent-task.xml'),
            (Join-Path $PSScriptRoot '..\build\windows\trackssl-agent-task.xml'))) {
        if (Test-Path -LiteralPath $candidate) { return $candidate }
    }
    throw 'trackssl-agent-task.xml not found beside this script or in ..\build\windows'
}

$exe = (Resolve-Path -LiteralPath $Executable).Path
$config = Join-Path $DataDir 'environment.txt'
$logDir = Join-Path $DataDir 'logs'
$stateDir = Join-Path $DataDir 'state'

New-Item -ItemType Directory -Force -Path $DataDir, $logDir, $stateDir | Out-Null
# Only SYSTEM (S-1-5-18) and Administrators (S-1-5-32-544); the token must not be readable
# by ordinary users. A service account gets read/write as well.
$grants = @('*S-1-5-18:(OI)(CI)F', '*S-1-5-32-544:(OI)(CI)F')
if ($User -ne 'S-1-5-18') { $grants += "${User}:(OI)(CI)M" }
& icacls.exe $DataDir /inheritance:r /grant:r @grants | Out-Null
if ($LASTEXITCODE -ne 0) { throw "icacls failed on $DataDir ($LASTEXITCODE)" }

if (-not (Test-Path -LiteralPath $config)) {
    @(
        '# trackssl-agent configuration (KEY=VALUE); see docs/platforms.md',
        'TRACKSSL_AUTH_TOKEN=',
        'TRACKSSL_AGENT_TOKEN=',
        "TRACKSSL_STATE_DIR=$stateDir"
    ) | Set-Content -LiteralPath $config -Encoding UTF8
    Write-Host "Wrote ${config}: fill in TRACKSSL_AUTH_TOKEN and TRACKSSL_AGENT_TOKEN."
}

function ConvertTo-XmlText([string] $value) {
    return [System.Security.SecurityElement]::Escape($value)
}

$values = [ordered]@{
    '__EXE__'        = $exe
    '__CONFIG__'     = $config
    '__LOG_FILE__'   = (Join-Path $logDir 'trackssl-agent.log')
    '__WORKDIR__'    = $DataDir
    '__USER__'       = $User
    '__START__'      = (Get-Date).Date.ToString('yyyy-MM-ddTHH:mm:ss')
}
$xml = Get-Content -LiteralPath (Find-Template) -Raw -Encoding UTF8
foreach ($key in $values.Keys) {
    $xml = $xml.Replace($key, (ConvertTo-XmlText $values[$key]))
}
if ($xml -match '__[A-Z_]+__') { throw "unfilled placeholder $($Matches[0]) in the task template" }
# The XML goes to Task Scheduler as a .NET string, which is UTF-16 whatever the file was.
$xml = $xml.Replace('encoding="UTF-8"', 'encoding="UTF-16"')

if ($User -ne 'S-1-5-18') {
    $credential = Get-Credential -UserName $User -Message "Password of $User for the task"
    Register-ScheduledTask -TaskName $TaskName -Xml $xml -User $User `
        -Password $credential.GetNetworkCredential().Password -Force | Out-Null
} else {
    Register-ScheduledTask -TaskName $TaskName -Xml $xml -Force | Out-Null
}
Write-Host "Registered task '$TaskName': $exe check-once every 4 hours, log in $logDir."
Write-Host "Run it now with: Start-ScheduledTask -TaskName '$TaskName'"
