<#
.SYNOPSIS
  Registers the Task Scheduler task that runs "trackssl-agent check-once" every 4 hours.

.DESCRIPTION
  Fills in build\windows\trackssl-agent-task.xml (or trackssl-agent-task.xml beside this
  script, as shipped in the release) and registers it, by default as SYSTEM. Creates the
  data folder (configuration, state, log), owned by Administrators and readable by SYSTEM,
  Administrators and the task's account only since environment.txt holds the auth token
  (inherited entries are removed), and writes a starter environment.txt if none exists. Run
  from an elevated PowerShell. Running it again replaces the task (the way to upgrade:
  replace the executable, run this again).

  Refuses to register an executable that a non-administrator could replace or plant a DLL
  beside (a user-writable file or folder, e.g. under Downloads or C:\tools): that would hand
  the task's account (SYSTEM by default) to any local user. Copy it under C:\Program Files
  first.

  Refuses a data folder, or an environment.txt in it, that someone other than SYSTEM or an
  administrator created before the install (any user may create folders in C:\ProgramData):
  its owner could change the permissions back and read the token, or have planted a
  TRACKSSL_URL line that sends the tokens elsewhere. The folder is given to Administrators
  (owner) before its permissions are set.

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
    $SystemSid, $AdministratorsSid, 'S-1-3-0', $TrustedInstallerSid
)
$TrustedInstallerSid = 'S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464'
$IsSystem = $User -in @($SystemSid, 'SYSTEM', 'NT AUTHORITY\SYSTEM')
$IsGmsa = (-not $IsSystem) -and $User.EndsWith('$')
$Account = $(if ($IsSystem) { 'SYSTEM' } else { $User })

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
    # The task runs whatever file is at this path as its account (SYSTEM, a gMSA, a service
    # account): refuse when anyone but SYSTEM, Administrators or TrustedInstaller could
    # change the file, add a file (a DLL) beside it, or replace a folder on its path.
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
            throw ("refusing to run $exe as ${Account}: $($check.Path) can be changed by $writer. " +
                "Copy the executable to a folder only administrators can write, e.g. " +
                "C:\Program Files\TrackSSL, and run this script again.")
        }
    }
}

function Get-AdminOwnerSids {
    # Owners that may have made the data folder or environment.txt: SYSTEM, Administrators,
    # TrustedInstaller, the administrator running this script, and the local Administrators
    # group's other members (an earlier install by another administrator on a Windows whose
    # new objects belong to their creator).
    $sids = @($SystemSid, $AdministratorsSid, $TrustedInstallerSid,
        [System.Security.Principal.WindowsIdentity]::GetCurrent().User.Value)
    try {
        $sids += @(Get-LocalGroupMember -SID $AdministratorsSid -ErrorAction Stop |
                ForEach-Object { $_.SID.Value })
    } catch {
        # Domain controllers and orphaned members make the listing fail: those owners are
        # refused, and the message says what to do.
    }
    return $sids
}

function Assert-AdminOwned([string] $path) {
    # Refuses a folder or file that a non-administrator created (and so owns: an owner can
    # always rewrite the permissions), or a link that would send what follows elsewhere.
    $item = Get-Item -LiteralPath $path -Force
    if ($item.Attributes -band [System.IO.FileAttributes]::ReparsePoint) {
        throw ("refusing to use ${path}: it is a link (junction or symbolic link). " +
            "Delete it after checking where it points, and run this script again.")
    }
    try {
        $acl = Get-Acl -LiteralPath $path
        $owner = $acl.GetOwner([System.Security.Principal.SecurityIdentifier]).Value
    } catch {
        throw ("refusing to use ${path}: its owner cannot be read ($($_.Exception.Message)), " +
            "so it is not an administrator's. Check what it holds, delete it, and run this " +
            "script again (or choose another folder with -DataDir).")
    }
    if ($owner -notin (Get-AdminOwnerSids)) {
        throw ("refusing to use ${path}: it belongs to $($acl.Owner), not to SYSTEM or an " +
            "administrator, so someone made it before this install and could read the token " +
            "or change the settings. Check what it holds, delete it, and run this script again " +
            "(or choose another folder with -DataDir).")
    }
}

function Assert-NoLinkInside([string] $path) {
    # A junction planted inside would make the recursive owner and permission reset below
    # change whatever it points to.
    $link = Get-ChildItem -LiteralPath $path -Recurse -Force -Attributes ReparsePoint `
        -ErrorAction SilentlyContinue | Select-Object -First 1
    if ($null -ne $link) {
        throw ("refusing to use ${path}: $($link.FullName) is a link (junction or " +
            "symbolic link). Delete it after checking where it points, and run this script again.")
    }
}

function Set-AdminOwner([string] $path) {
    # Administrators become the owner before the permissions are set: an owner can always
    # change the permissions, so a folder whose owner is another account is never private.
    $acl = Get-Acl -LiteralPath $path
    $acl.SetOwner([System.Security.Principal.SecurityIdentifier] $AdministratorsSid)
    Set-Acl -LiteralPath $path -AclObject $acl
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
}

function Reset-FolderContents([string] $path) {
    # Files and folders already inside go to Administrators and back to inheriting only what
    # Set-PrivateFolder set (after Assert-NoLinkInside: icacls /T would follow a junction).
    & icacls.exe (Join-Path $path '*') /setowner "*$AdministratorsSid" /T /C /Q | Out-Null
    & icacls.exe (Join-Path $path '*') /reset /T /C /Q | Out-Null
}

function ConvertTo-XmlText([string] $value) {
    return [System.Security.SecurityElement]::Escape($value)
}

$exe = (Resolve-Path -LiteralPath $Executable).Path
# Every account, not only SYSTEM: a user who can replace the file runs code as the task's account.
Assert-OnlyAdministratorsCanReplace $exe

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
# Any user may create folders in C:\ProgramData: a folder that is already there must be an
# administrator's. Then it is taken (owner first, then the permissions) before anything in
# it is trusted, and only then is environment.txt looked at: until the permissions were set,
# anyone could have put one there.
if (Test-Path -LiteralPath $DataDir) {
    Assert-AdminOwned $DataDir
} else {
    New-Item -ItemType Directory -Path $DataDir | Out-Null
}
Set-AdminOwner $DataDir
Set-PrivateFolder $DataDir
Assert-NoLinkInside $DataDir
if (Test-Path -LiteralPath $config) {
    # Never keep a file someone else wrote: a planted TRACKSSL_URL would receive the tokens.
    Assert-AdminOwned $config
}
Reset-FolderContents $DataDir
New-Item -ItemType Directory -Force -Path $logDir, $stateDir | Out-Null

if (-not (Test-Path -LiteralPath $config)) {
    @(
        '# trackssl-agent configuration (KEY=VALUE); see https://github.com/trackssl/trackssl-agent#windows',
        'TRACKSSL_AUTH_TOKEN=',
        'TRACKSSL_AGENT_TOKEN=',
        "TRACKSSL_STATE_DIR=$stateDir"
    ) | Set-Content -LiteralPath $config -Encoding UTF8
    Set-AdminOwner $config
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
    '__USER__'     = $User
    '__START__'    = $start
}
$xml = Get-Content -LiteralPath (Find-Template) -Raw -Encoding UTF8
foreach ($key in $values.Keys) {
    $xml = $xml.Replace($key, (ConvertTo-XmlText $values[$key]))
}
if ($xml -match '__[A-Z_]+__') { throw "unfilled placeholder $($Matches[0]) in the task template" }
if ($IsGmsa) {
    # The final principal goes in the definition itself, so the task is never registered as
    # anyone else: LogonType Password with no password, which Task Scheduler fetches from
    # Active Directory (the machine must be allowed to retrieve it).
    $xml = $xml.Replace('</UserId>', "</UserId>`r`n      <LogonType>Password</LogonType>")
}
# The XML goes to Task Scheduler as a .NET string, which is UTF-16 whatever the file was.
$xml = $xml.Replace('encoding="UTF-8"', 'encoding="UTF-16"')

# One registration with the final principal. If it fails, Task Scheduler keeps what was there
# before (nothing, or the previous install's task); a task this run created is removed.
$existed = $null -ne (Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue)
$register = @{ TaskName = $TaskName; Xml = $xml; Force = $true }
if ($null -ne $password) { $register.User = $User; $register.Password = $password }
try {
    Register-ScheduledTask @register | Out-Null
} catch {
    if (-not $existed -and (Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue)) {
        Unregister-ScheduledTask -TaskName $TaskName -Confirm:$false
    }
    throw "could not register the task '$TaskName' as ${Account}: $($_.Exception.Message)"
}
Write-Host "Registered task '$TaskName': $exe check-once every 4 hours as $User, log in $logDir."
Write-Host "Run it now with: Start-ScheduledTask -TaskName '$TaskName'"
