<#
.SYNOPSIS
  Removes the Task Scheduler task registered by install-windows-task.ps1.

.DESCRIPTION
  Stops the task if it is running and unregisters it. The data folder (configuration,
  undelivered results, log) stays unless -RemoveData is given.
#>
[CmdletBinding()]
param(
    [string] $TaskName = 'TrackSSL Agent',
    [string] $DataDir = (Join-Path $env:ProgramData 'TrackSSL'),
    [switch] $RemoveData
)
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

$task = Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
if ($null -eq $task) {
    Write-Host "No task named '$TaskName'."
} else {
    Stop-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
    Unregister-ScheduledTask -TaskName $TaskName -Confirm:$false
    Write-Host "Removed task '$TaskName'."
}
if ($RemoveData -and (Test-Path -LiteralPath $DataDir)) {
    Remove-Item -LiteralPath $DataDir -Recurse -Force
    Write-Host "Removed $DataDir."
}
