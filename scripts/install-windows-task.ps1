<#
.SYNOPSIS
  Registers the Task Scheduler task that runs "trackssl-agent check-once" every 4 hours.

.DESCRIPTION
  Fills in build\windows\trackssl-agent-task.xml (or trackssl-agent-task.xml beside this
  script, as shipped in the release) and registers it, by default as SYSTEM. Creates the
  data folder (configuration, state, log), readable by SYSTEM and Administrators only since
  environment.txt holds the auth token (inherited entries are removed), and writes a starter
  environment.txt if none exists. Run from an elevated PowerShell. Running it again replaces
  the task (the way to upgrade: replace the executable, run this again).

  Refuses to register an executable that a non-administrator could replace or plant a DLL
  beside (a user-writable file or folder, e.g. under Downloads or C:\tools) to run as SYSTEM:
  that would hand SYSTEM to any local user. Copy it under C:\Program Files first.

.PARAMETER User
  S-1-5-18 (SYSTEM, the default), a group managed service account ending in "$"
  (DOMAIN\svc-trackssl$: no password, Windows fetches it), or a service account
  (DOMAIN\svc-trackssl: its password comes from -Credential, else it is asked for).

.PARAMETER Credential
  The service account's credential, for unattended installs:
  -Credential (Import-Clixml cred.xml). Not used for SYSTEM or a gMSA.

.EXAMPLE
  .\install-windows-task.ps1 -Executable 'C:\Program Files\TrackSSL\trackssl-agent.exe'

.EXAMPLE
  .\install-windows-task.ps1 -Executable 'C:\Program Files\TrackSSL\trackssl-agent.exe' -User 'CORP\svc-trackssl$'
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)] [string] $Executable,
    [string] $DataDir = (Join-Path $env:ProgramData 'TrackSSL'),
    [string] $TaskName = 'TrackSSL Agent',
    [string] $User = 'S-1-5-18',
    [pscredential] $Credential = $null,
    [string] $Template = ''
)
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

$SystemSid = 'S-1-5-18'
$AdministratorsSid = 'S-1-5-32-544'
# Principals that may write where a SYSTEM task's executable lives: SYSTEM, Administrators,
# TrustedInstaller, and CREATOR OWNER (an inherit-only placeholder, never a real writer).
$TrustedSids = @(
    $SystemSid, $AdministratorsSid, 'S-1-3-0',
    'S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464'
)
$IsSystem = $User -in @($SystemSid, 'SYSTEM', 'NT AUTHORITY\SYSTEM')
$IsGmsa = (-not $IsSystem) -and $User.EndsWith('$')

function Find-Template {
    if ($Template) { return $Template }
    foreach ($candidate in @(
            (Join-Path $PSScriptRoot 'trackssl-agent-task.xml'),
            (Join-Path $PSScriptRoot '..\build\windows\trackssl-agent-task.xml'))) {
        if (Test-Path -LiteralPath $candidate) { return $candidate }
    }
    throw 'trackssl-agent-task.xml not found beside this script or in ..\build\windows'
}

function Get-Sid([System.Security.Principal.IdentityReference] $identity) {
    try {
        return $identity.Translate([System.Security.Principal.SecurityIdentifier]).Value
    } catch {
        return $identity.Value  # an orphaned SID or an unresolvable name: not trusted
    }
}

function Find-UntrustedWriter([string] $path, [System.Security.AccessControl.FileSystemRights] $rights) {
    # The first principal outside $TrustedSids that owns $path or is allowed any of $rights
    # on it; $null when there is none.
    $acl = Get-Acl -LiteralPath $path
    $owner = Get-Sid ([System.Security.Principal.NTAccount] $acl.Owner)
    if ($owner -notin $TrustedSids) { return "$($acl.Owner) (owner)" }
    $rules = $acl.GetAccessRules($true, $true, [System.Security.Principal.SecurityIdentifier])
    foreach ($rule in $rules) {
        if ($rule.AccessControlType -ne 'Allow') { continue }
        # Entries that only pass down to children do not apply to $path itself.
        if ($rule.PropagationFlags -band [System.Security.AccessControl.PropagationFlags]::InheritOnly) { continue }
        if (($rule.FileSystemRights -band $rights) -eq 0) { continue }
        if ($rule.IdentityReference.Value -notin $TrustedSids) {
            $name = $rule.IdentityReference.Value
            try { $name = $rule.IdentityReference.Translate([System.Security.Principal.NTAccount]).Value } catch { }
            return "$name ($($rule.FileSystemRights))"
        }
    }
    return $null
}

function Assert-OnlyAdministratorsCanReplace([string] $exe) {
    # A SYSTEM task runs whatever file is at this path: refuse when anyone but SYSTEM,
    # Administrators or TrustedInstaller could change the file, add a file (a DLL) beside
    # it, or replace a folder on its path.
    $R = [System.Security.AccessControl.FileSystemRights]
    $change = $R::WriteData -bor $R::AppendData -bor $R::Delete -bor $R::ChangePermissions `
        -bor $R::TakeOwnership -bor $R::WriteAttributes -bor $R::WriteExtendedAttributes
    $replace = $R::Delete -bor $R::DeleteSubdirectoriesAndFiles -bor $R::ChangePermissions -bor $R::TakeOwnership
    $checks = @(@{ Path = $exe; Rights = $change })
    $folder = Split-Path -Parent $exe
    # The executable's own folder: creating files there plants DLLs next to it.
    $checks += @{ Path = $folder; Rights = ($change -bor $replace) }
    $parent = Split-Path -Parent $folder
    while ($parent) {
        $checks += @{ Path = $parent; Rights = $replace }
        $parent = Split-Path -Parent $parent
    }
    foreach ($check in $checks) {
        $writer = Find-UntrustedWriter $check.Path $check.Rights
        if ($writer) {
            throw ("refusing to run $exe as SYSTEM: $($check.Path) can be changed by $writer. " +
                "Copy the executable to a folder only administrators can write, e.g. " +
                "C:\Program Files\TrackSSL, and run this script again.")
        }
    }
}

function Set-PrivateFolder([string] $path) {
    # Only SYSTEM, Administrators and the task's account; inherited entries are removed
    # (SetAccessRuleProtection($true, $false)), so a folder that already existed with a
    # broader ACL does not keep it.
    $acl = New-Object System.Security.AccessControl.DirectorySecurity
    $acl.SetAccessRuleProtection($true, $false)
    $inherit = [System.Security.AccessControl.InheritanceFlags]'ContainerInherit, ObjectInherit'
    $none = [System.Security.AccessControl.PropagationFlags]::None
    $grants = @(
        @{ Who = [System.Security.Principal.SecurityIdentifier] $SystemSid; Rights = 'FullControl' },
        @{ Who = [System.Security.Principal.SecurityIdentifier] $AdministratorsSid; Rights = 'FullControl' }
    )
    if (-not $IsSystem) {
        $grants += @{ Who = [System.Security.Principal.NTAccount] $User; Rights = 'Modify' }
    }
    foreach ($grant in $grants) {
        $rule = New-Object System.Security.AccessControl.FileSystemAccessRule(
            $grant.Who, $grant.Rights, $inherit, $none, 'Allow')
        $acl.AddAccessRule($rule)
    }
    Set-Acl -LiteralPath $path -AclObject $acl
    # Files and folders already inside go back to inheriting only what was set above.
    & icacls.exe (Join-Path $path '*') /reset /T /C /Q | Out-Null
}

function ConvertTo-XmlText([string] $value) {
    return [System.Security.SecurityElement]::Escape($value)
}

$exe = (Resolve-Path -LiteralPath $Executable).Path
if ($IsSystem) { Assert-OnlyAdministratorsCanReplace $exe }

$password = $null
if (-not $IsSystem -and -not $IsGmsa) {
    if ($null -eq $Credential) {
        if (-not [Environment]::UserInteractive) {
            throw "-User $User needs -Credential in a non-interactive session (or use a gMSA, DOMAIN\name$)."
        }
        $Credential = Get-Credential -UserName $User -Message "Password of $User for the task"
    }
    $password = $Credential.GetNetworkCredential().Password
}

$config = Join-Path $DataDir 'environment.txt'
$logDir = Join-Path $DataDir 'logs'
$stateDir = Join-Path $DataDir 'state'
New-Item -ItemType Directory -Force -Path $DataDir, $logDir, $stateDir | Out-Null
Set-PrivateFolder $DataDir

if (-not (Test-Path -LiteralPath $config)) {
    @(
        '# trackssl-agent configuration (KEY=VALUE); see https://github.com/trackssl/trackssl-agent#windows',
        'TRACKSSL_AUTH_TOKEN=',
        'TRACKSSL_AGENT_TOKEN=',
        "TRACKSSL_STATE_DIR=$stateDir"
    ) | Set-Content -LiteralPath $config -Encoding UTF8
    Write-Host "Wrote ${config}: fill in TRACKSSL_AUTH_TOKEN and TRACKSSL_AGENT_TOKEN."
}

# 's' is the sortable ISO 8601 pattern with the Gregorian calendar whatever the culture: a
# Thai or Saudi Windows would otherwise write a Buddhist or Hijri year and the task would
# never fire.
$start = (Get-Date).Date.ToString('s', [System.Globalization.CultureInfo]::InvariantCulture)
$values = [ordered]@{
    '__EXE__'      = $exe
    '__CONFIG__'   = $config
    '__LOG_FILE__' = (Join-Path $logDir 'trackssl-agent.log')
    '__WORKDIR__'  = $DataDir
    # A gMSA is set below, after registering: its principal needs LogonType Password.
    '__USER__'     = $(if ($IsGmsa) { $SystemSid } else { $User })
    '__START__'    = $start
}
$xml = Get-Content -LiteralPath (Find-Template) -Raw -Encoding UTF8
foreach ($key in $values.Keys) {
    $xml = $xml.Replace($key, (ConvertTo-XmlText $values[$key]))
}
if ($xml -match '__[A-Z_]+__') { throw "unfilled placeholder $($Matches[0]) in the task template" }
# The XML goes to Task Scheduler as a .NET string, which is UTF-16 whatever the file was.
$xml = $xml.Replace('encoding="UTF-8"', 'encoding="UTF-16"')

if ($null -ne $password) {
    Register-ScheduledTask -TaskName $TaskName -Xml $xml -User $User -Password $password -Force | Out-Null
} else {
    Register-ScheduledTask -TaskName $TaskName -Xml $xml -Force | Out-Null
}
if ($IsGmsa) {
    # LogonType Password with no password: Task Scheduler fetches the gMSA's password from
    # Active Directory itself (the machine must be allowed to retrieve it).
    $principal = New-ScheduledTaskPrincipal -UserId $User -LogonType Password -RunLevel Limited
    Set-ScheduledTask -TaskName $TaskName -Principal $principal | Out-Null
}
Write-Host "Registered task '$TaskName': $exe check-once every 4 hours as $User, log in $logDir."
Write-Host "Run it now with: Start-ScheduledTask -TaskName '$TaskName'"
