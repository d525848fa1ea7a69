#!/usr/bin/env python3
"""Build the sample corpus ``configs/sample/docs.jsonl``, deterministically.

Three hundred short help-centre articles about a made-up product ("Lumen"),
in eleven languages, written from the phrase lists below (no network, no
downloads). A handful are long enough (3-6k characters) to be split into
several chunks at ``max_chars: 2048``, and two lines in the middle are broken
on purpose (one is not JSON, one has an empty text) so that the sample run
shows rows in ``errors/``.

    python scripts/make_sample_corpus.py            # writes configs/sample/docs.jsonl
    python scripts/make_sample_corpus.py OUT.jsonl
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

N_DOCS = 300
SEED = 20240611
BROKEN_JSON_LINE = 150  # 1-based line numbers of the two deliberately bad lines
EMPTY_TEXT_LINE = 151
LONG_DOCS = {37: "en", 88: "fr", 142: "de", 203: "ja", 266: "ru", 291: "es"}

# Slot values are shared by every language: plan names, apps and numbers read
# the same everywhere.
SLOTS = {
    "plan": ["Free", "Plus", "Pro", "Team", "Enterprise"],
    "app": ["Slack", "Google Drive", "Dropbox", "GitHub", "Notion", "Zapier"],
    "n": ["3", "5", "10", "25", "50", "100"],
    "days": ["7", "14", "30", "60", "90"],
    "size": ["100 MB", "250 MB", "1 GB", "5 GB"],
    "ver": ["4.2", "4.3", "5.0", "5.1"],
}

# language → topic → (titles, sentences). Sentences may use the slots above.
PHRASES: dict[str, dict[str, tuple[list[str], list[str]]]] = {
    "en": {
        "sync": (
            ["Why are my notes not syncing?", "Syncing across devices", "Offline mode and sync"],
            [
                "Lumen syncs your notes every few seconds while you are online.",
                "If a device has been offline for more than {days} days, open the app and pull down to force a full sync.",
                "Changes made offline are kept on the device and uploaded as soon as a connection is available.",
                "On the {plan} plan you can sync up to {n} devices at the same time.",
                "Conflicting edits are never lost: Lumen keeps both versions and marks the note with a conflict badge.",
            ],
        ),
        "billing": (
            ["Changing your plan", "Understanding your invoice", "Refunds and cancellations"],
            [
                "You can upgrade to the {plan} plan at any time from Settings > Billing.",
                "Invoices are sent by email on the first day of each billing period.",
                "If you cancel within {days} days of a renewal, we refund the unused part of your subscription.",
                "Prices shown in the app include VAT where it applies.",
                "Team administrators can download every invoice as a PDF from the admin console.",
            ],
        ),
        "export": (
            ["Exporting your data", "Importing notes from other apps", "Backups"],
            [
                "You can export all your notes as Markdown, HTML or PDF.",
                "Attachments larger than {size} are exported as separate files in the same folder.",
                "Imports from {app} keep your folders, tags and creation dates.",
                "An automatic backup is kept for {days} days on paid plans.",
                "Exports are prepared in the background and we email you a download link when they are ready.",
            ],
        ),
        "security": (
            ["Two-factor authentication", "How we protect your data", "Signing in with SSO"],
            [
                "We recommend turning on two-factor authentication for every account.",
                "All notes are encrypted in transit and at rest.",
                "Single sign-on is available on the {plan} plan with any SAML 2.0 identity provider.",
                "After {n} failed sign-in attempts, the account is locked for fifteen minutes.",
                "You can see every active session in Settings > Security and sign out of the ones you do not recognise.",
            ],
        ),
        "sharing": (
            ["Sharing a notebook", "Guest access", "Connecting {app}"],
            [
                "Share a notebook by clicking Share and entering your colleague's email address.",
                "Guests can view and comment but cannot edit unless you give them edit rights.",
                "The {app} integration posts a message whenever a shared note changes.",
                "A shared notebook can have up to {n} members on the {plan} plan.",
                "Version {ver} adds read-only public links that expire after {days} days.",
            ],
        ),
    },
    "fr": {
        "sync": (
            ["Pourquoi mes notes ne se synchronisent-elles pas ?", "Synchronisation entre appareils"],
            [
                "Lumen synchronise vos notes toutes les quelques secondes lorsque vous êtes en ligne.",
                "Si un appareil est resté hors ligne plus de {days} jours, ouvrez l'application et tirez vers le bas pour forcer une synchronisation complète.",
                "Les modifications faites hors ligne sont conservées sur l'appareil et envoyées dès que la connexion revient.",
                "Avec l'offre {plan}, vous pouvez synchroniser jusqu'à {n} appareils en même temps.",
                "Aucune modification n'est perdue en cas de conflit : Lumen garde les deux versions de la note.",
            ],
        ),
        "billing": (
            ["Changer d'offre", "Comprendre votre facture", "Remboursements et résiliation"],
            [
                "Vous pouvez passer à l'offre {plan} à tout moment depuis Réglages > Facturation.",
                "Les factures sont envoyées par e-mail le premier jour de chaque période.",
                "Si vous résiliez dans les {days} jours suivant un renouvellement, nous remboursons la part non utilisée.",
                "Les prix affichés dans l'application incluent la TVA lorsqu'elle s'applique.",
                "Les administrateurs d'équipe peuvent télécharger toutes les factures au format PDF.",
            ],
        ),
        "export": (
            ["Exporter vos données", "Importer des notes depuis une autre application"],
            [
                "Vous pouvez exporter toutes vos notes en Markdown, HTML ou PDF.",
                "Les pièces jointes de plus de {size} sont exportées comme fichiers séparés.",
                "Les imports depuis {app} conservent vos dossiers, vos étiquettes et les dates de création.",
                "Une sauvegarde automatique est conservée pendant {days} jours sur les offres payantes.",
                "L'export est préparé en arrière-plan et un lien de téléchargement vous est envoyé par e-mail.",
            ],
        ),
        "security": (
            ["Authentification à deux facteurs", "Comment nous protégeons vos données"],
            [
                "Nous vous conseillons d'activer l'authentification à deux facteurs sur chaque compte.",
                "Toutes les notes sont chiffrées pendant le transfert et au repos.",
                "L'authentification unique (SSO) est disponible avec l'offre {plan}.",
                "Après {n} tentatives de connexion échouées, le compte est bloqué pendant quinze minutes.",
                "Vous pouvez voir toutes les sessions actives dans Réglages > Sécurité.",
            ],
        ),
        "sharing": (
            ["Partager un carnet", "Accès invité", "Connecter {app}"],
            [
                "Pour partager un carnet, cliquez sur Partager et saisissez l'adresse e-mail de votre collègue.",
                "Les invités peuvent lire et commenter, mais pas modifier sans votre autorisation.",
                "L'intégration {app} publie un message chaque fois qu'une note partagée change.",
                "Un carnet partagé peut compter jusqu'à {n} membres avec l'offre {plan}.",
            ],
        ),
    },
    "de": {
        "sync": (
            ["Warum werden meine Notizen nicht synchronisiert?", "Synchronisierung zwischen Geräten"],
            [
                "Lumen synchronisiert Ihre Notizen alle paar Sekunden, solange Sie online sind.",
                "War ein Gerät länger als {days} Tage offline, öffnen Sie die App und ziehen Sie nach unten, um eine vollständige Synchronisierung zu starten.",
                "Offline vorgenommene Änderungen bleiben auf dem Gerät und werden hochgeladen, sobald wieder eine Verbindung besteht.",
                "Im Tarif {plan} können Sie bis zu {n} Geräte gleichzeitig synchronisieren.",
                "Bei Konflikten geht nichts verloren: Lumen behält beide Versionen der Notiz.",
            ],
        ),
        "billing": (
            ["Tarif wechseln", "Ihre Rechnung verstehen", "Erstattung und Kündigung"],
            [
                "Sie können jederzeit unter Einstellungen > Abrechnung auf den Tarif {plan} wechseln.",
                "Rechnungen werden am ersten Tag jedes Abrechnungszeitraums per E-Mail verschickt.",
                "Wenn Sie innerhalb von {days} Tagen nach einer Verlängerung kündigen, erstatten wir den nicht genutzten Anteil.",
                "Die in der App angezeigten Preise enthalten die gesetzliche Mehrwertsteuer.",
            ],
        ),
        "export": (
            ["Daten exportieren", "Notizen aus anderen Apps importieren", "Sicherungen"],
            [
                "Sie können alle Notizen als Markdown, HTML oder PDF exportieren.",
                "Anhänge über {size} werden als eigene Dateien im selben Ordner exportiert.",
                "Beim Import aus {app} bleiben Ordner, Schlagwörter und Erstellungsdaten erhalten.",
                "In den kostenpflichtigen Tarifen wird eine automatische Sicherung {days} Tage lang aufbewahrt.",
            ],
        ),
        "security": (
            ["Zwei-Faktor-Authentifizierung", "So schützen wir Ihre Daten"],
            [
                "Wir empfehlen, für jedes Konto die Zwei-Faktor-Authentifizierung zu aktivieren.",
                "Alle Notizen werden bei der Übertragung und im Ruhezustand verschlüsselt.",
                "Single Sign-on ist im Tarif {plan} mit jedem SAML-2.0-Identitätsanbieter verfügbar.",
                "Nach {n} fehlgeschlagenen Anmeldeversuchen wird das Konto für fünfzehn Minuten gesperrt.",
                "Unter Einstellungen > Sicherheit sehen Sie alle aktiven Sitzungen und können unbekannte beenden.",
            ],
        ),
        "sharing": (
            ["Ein Notizbuch teilen", "Gastzugang", "{app} verbinden"],
            [
                "Klicken Sie auf Teilen und geben Sie die E-Mail-Adresse Ihrer Kollegin oder Ihres Kollegen ein.",
                "Gäste können lesen und kommentieren, aber ohne Ihre Freigabe nichts bearbeiten.",
                "Die {app}-Integration sendet eine Nachricht, sobald sich eine geteilte Notiz ändert.",
                "Ein geteiltes Notizbuch kann im Tarif {plan} bis zu {n} Mitglieder haben.",
            ],
        ),
    },
    "es": {
        "sync": (
            ["¿Por qué no se sincronizan mis notas?", "Sincronización entre dispositivos"],
            [
                "Lumen sincroniza tus notas cada pocos segundos mientras estás conectado.",
                "Si un dispositivo ha estado sin conexión más de {days} días, abre la aplicación y desliza hacia abajo para forzar una sincronización completa.",
                "Los cambios hechos sin conexión se guardan en el dispositivo y se suben en cuanto vuelve la conexión.",
                "Con el plan {plan} puedes sincronizar hasta {n} dispositivos a la vez.",
                "Si hay un conflicto, Lumen conserva las dos versiones de la nota.",
            ],
        ),
        "billing": (
            ["Cambiar de plan", "Entender tu factura", "Reembolsos y cancelaciones"],
            [
                "Puedes pasar al plan {plan} en cualquier momento desde Ajustes > Facturación.",
                "Las facturas se envían por correo electrónico el primer día de cada periodo.",
                "Si cancelas en los {days} días siguientes a una renovación, te devolvemos la parte no utilizada.",
                "Los precios que ves en la aplicación incluyen el IVA cuando corresponde.",
            ],
        ),
        "export": (
            ["Exportar tus datos", "Importar notas desde otras aplicaciones"],
            [
                "Puedes exportar todas tus notas en Markdown, HTML o PDF.",
                "Los archivos adjuntos de más de {size} se exportan como archivos separados.",
                "Las importaciones desde {app} conservan tus carpetas, etiquetas y fechas de creación.",
                "En los planes de pago se guarda una copia de seguridad automática durante {days} días.",
            ],
        ),
        "security": (
            ["Verificación en dos pasos", "Cómo protegemos tus datos"],
            [
                "Te recomendamos activar la verificación en dos pasos en todas las cuentas.",
                "Todas las notas se cifran en tránsito y en reposo.",
                "El inicio de sesión único está disponible en el plan {plan}.",
                "Tras {n} intentos fallidos de inicio de sesión, la cuenta se bloquea durante quince minutos.",
            ],
        ),
        "sharing": (
            ["Compartir una libreta", "Acceso de invitados", "Conectar {app}"],
            [
                "Para compartir una libreta, pulsa Compartir e introduce el correo de tu compañero.",
                "Los invitados pueden ver y comentar, pero no editar sin tu permiso.",
                "La integración con {app} publica un mensaje cada vez que cambia una nota compartida.",
                "Una libreta compartida admite hasta {n} miembros en el plan {plan}.",
            ],
        ),
    },
    "pt": {
        "sync": (
            ["Por que minhas notas não sincronizam?", "Sincronização entre dispositivos"],
            [
                "O Lumen sincroniza suas notas a cada poucos segundos enquanto você está on-line.",
                "Se um dispositivo ficou off-line por mais de {days} dias, abra o aplicativo e puxe para baixo para forçar uma sincronização completa.",
                "As alterações feitas off-line ficam no dispositivo e são enviadas assim que a conexão voltar.",
                "No plano {plan}, você pode sincronizar até {n} dispositivos ao mesmo tempo.",
            ],
        ),
        "billing": (
            ["Mudar de plano", "Entendendo sua fatura"],
            [
                "Você pode mudar para o plano {plan} a qualquer momento em Configurações > Cobrança.",
                "As faturas são enviadas por e-mail no primeiro dia de cada período.",
                "Se cancelar em até {days} dias após uma renovação, reembolsamos a parte não utilizada.",
                "Os administradores da equipe podem baixar todas as faturas em PDF.",
            ],
        ),
        "export": (
            ["Exportar seus dados", "Importar notas de outros aplicativos"],
            [
                "Você pode exportar todas as suas notas em Markdown, HTML ou PDF.",
                "Anexos maiores que {size} são exportados como arquivos separados.",
                "As importações do {app} mantêm suas pastas, etiquetas e datas de criação.",
                "Um backup automático é mantido por {days} dias nos planos pagos.",
            ],
        ),
        "security": (
            ["Autenticação de dois fatores", "Como protegemos seus dados"],
            [
                "Recomendamos ativar a autenticação de dois fatores em todas as contas.",
                "Todas as notas são criptografadas em trânsito e em repouso.",
                "Depois de {n} tentativas de login sem sucesso, a conta fica bloqueada por quinze minutos.",
            ],
        ),
        "sharing": (
            ["Compartilhar um caderno", "Conectar o {app}"],
            [
                "Para compartilhar um caderno, clique em Compartilhar e digite o e-mail do seu colega.",
                "Convidados podem ver e comentar, mas não editar sem a sua permissão.",
                "A integração com o {app} publica uma mensagem sempre que uma nota compartilhada muda.",
            ],
        ),
    },
    "it": {
        "sync": (
            ["Perché le mie note non si sincronizzano?", "Sincronizzazione tra dispositivi"],
            [
                "Lumen sincronizza le tue note ogni pochi secondi quando sei online.",
                "Se un dispositivo è rimasto offline per più di {days} giorni, apri l'app e trascina verso il basso per forzare una sincronizzazione completa.",
                "Le modifiche fatte offline restano sul dispositivo e vengono caricate appena torna la connessione.",
                "Con il piano {plan} puoi sincronizzare fino a {n} dispositivi contemporaneamente.",
            ],
        ),
        "billing": (
            ["Cambiare piano", "Capire la fattura"],
            [
                "Puoi passare al piano {plan} in qualsiasi momento da Impostazioni > Fatturazione.",
                "Le fatture vengono inviate via e-mail il primo giorno di ogni periodo.",
                "Se annulli entro {days} giorni da un rinnovo, rimborsiamo la parte non utilizzata.",
                "I prezzi mostrati nell'app includono l'IVA dove prevista.",
            ],
        ),
        "export": (
            ["Esportare i tuoi dati", "Importare note da altre app"],
            [
                "Puoi esportare tutte le note in Markdown, HTML o PDF.",
                "Gli allegati più grandi di {size} vengono esportati come file separati.",
                "Le importazioni da {app} mantengono cartelle, etichette e date di creazione.",
            ],
        ),
        "security": (
            ["Autenticazione a due fattori", "Come proteggiamo i tuoi dati"],
            [
                "Consigliamo di attivare l'autenticazione a due fattori su ogni account.",
                "Tutte le note sono cifrate durante il trasferimento e quando sono archiviate.",
                "Dopo {n} tentativi di accesso falliti, l'account viene bloccato per quindici minuti.",
            ],
        ),
        "sharing": (
            ["Condividere un taccuino", "Collegare {app}"],
            [
                "Per condividere un taccuino, fai clic su Condividi e inserisci l'e-mail del collega.",
                "Gli ospiti possono leggere e commentare, ma non modificare senza il tuo permesso.",
                "L'integrazione con {app} pubblica un messaggio ogni volta che una nota condivisa cambia.",
            ],
        ),
    },
    "ja": {
        "sync": (
            ["ノートが同期されないのはなぜですか？", "デバイス間の同期"],
            [
                "オンラインの間、Lumenは数秒ごとにノートを同期します。",
                "{days}日以上オフラインだったデバイスでは、アプリを開いて下に引っ張ると完全な同期が始まります。",
                "オフラインで行った変更は端末に保存され、接続が戻るとすぐにアップロードされます。",
                "{plan}プランでは、最大{n}台のデバイスを同時に同期できます。",
                "編集が競合しても内容は失われません。Lumenは両方のバージョンを保存します。",
            ],
        ),
        "billing": (
            ["プランの変更", "請求書について", "返金と解約"],
            [
                "設定 > 請求 から、いつでも{plan}プランにアップグレードできます。",
                "請求書は各請求期間の初日にメールで送信されます。",
                "更新から{days}日以内に解約した場合、未使用分を返金します。",
                "アプリに表示される価格には、該当する場合は消費税が含まれています。",
            ],
        ),
        "export": (
            ["データのエクスポート", "他のアプリからのインポート"],
            [
                "すべてのノートをMarkdown、HTML、PDFでエクスポートできます。",
                "{size}を超える添付ファイルは、同じフォルダに別ファイルとして書き出されます。",
                "{app}からのインポートでは、フォルダ、タグ、作成日が保持されます。",
                "有料プランでは、自動バックアップが{days}日間保存されます。",
            ],
        ),
        "security": (
            ["二要素認証", "データの保護について"],
            [
                "すべてのアカウントで二要素認証を有効にすることをおすすめします。",
                "すべてのノートは通信中も保存時も暗号化されています。",
                "ログインに{n}回失敗すると、アカウントは15分間ロックされます。",
                "設定 > セキュリティ で、現在有効なセッションをすべて確認できます。",
            ],
        ),
        "sharing": (
            ["ノートブックの共有", "{app}との連携"],
            [
                "ノートブックを共有するには、［共有］をクリックして相手のメールアドレスを入力します。",
                "ゲストは閲覧とコメントができますが、権限がなければ編集はできません。",
                "{app}連携を有効にすると、共有ノートが変更されるたびにメッセージが届きます。",
                "{plan}プランでは、共有ノートブックに最大{n}人のメンバーを追加できます。",
            ],
        ),
    },
    "zh": {
        "sync": (
            ["为什么我的笔记没有同步？", "多设备同步"],
            [
                "在线时，Lumen 每隔几秒就会同步一次你的笔记。",
                "如果设备离线超过{days}天，请打开应用并下拉，强制进行一次完整同步。",
                "离线时所做的修改会保存在设备上，网络恢复后立即上传。",
                "{plan} 套餐最多可以同时同步 {n} 台设备。",
                "发生编辑冲突时不会丢失内容，Lumen 会同时保留两个版本。",
            ],
        ),
        "billing": (
            ["更改套餐", "了解你的账单"],
            [
                "你可以随时在“设置 > 账单”中升级到 {plan} 套餐。",
                "账单会在每个计费周期的第一天通过电子邮件发送。",
                "如果你在续费后 {days} 天内取消，我们会退还未使用的部分。",
            ],
        ),
        "export": (
            ["导出数据", "从其他应用导入笔记"],
            [
                "你可以将所有笔记导出为 Markdown、HTML 或 PDF。",
                "大于 {size} 的附件会作为单独的文件导出。",
                "从 {app} 导入时会保留文件夹、标签和创建日期。",
            ],
        ),
        "security": (
            ["两步验证", "我们如何保护你的数据"],
            [
                "我们建议为每个账户开启两步验证。",
                "所有笔记在传输和存储时都经过加密。",
                "连续 {n} 次登录失败后，账户将被锁定十五分钟。",
            ],
        ),
        "sharing": (
            ["共享笔记本", "连接 {app}"],
            [
                "点击“共享”并输入同事的邮箱地址，即可共享笔记本。",
                "访客可以查看和评论，但未经授权不能编辑。",
                "启用 {app} 集成后，共享笔记每次变更都会收到一条消息。",
            ],
        ),
    },
    "ar": {
        "sync": (
            ["لماذا لا تتم مزامنة ملاحظاتي؟", "المزامنة بين الأجهزة"],
            [
                "يقوم Lumen بمزامنة ملاحظاتك كل بضع ثوانٍ عندما تكون متصلاً بالإنترنت.",
                "إذا بقي الجهاز دون اتصال لأكثر من {days} يومًا، افتح التطبيق واسحب للأسفل لبدء مزامنة كاملة.",
                "تُحفظ التغييرات التي تجريها دون اتصال على الجهاز وتُرفع فور عودة الاتصال.",
                "في خطة {plan} يمكنك مزامنة ما يصل إلى {n} أجهزة في الوقت نفسه.",
            ],
        ),
        "billing": (
            ["تغيير الخطة", "فهم الفاتورة"],
            [
                "يمكنك الترقية إلى خطة {plan} في أي وقت من الإعدادات ثم الفوترة.",
                "تُرسل الفواتير بالبريد الإلكتروني في اليوم الأول من كل فترة فوترة.",
                "إذا ألغيت الاشتراك خلال {days} يومًا من التجديد، نرد لك الجزء غير المستخدم.",
            ],
        ),
        "export": (
            ["تصدير بياناتك", "استيراد الملاحظات من تطبيقات أخرى"],
            [
                "يمكنك تصدير جميع ملاحظاتك بصيغة Markdown أو HTML أو PDF.",
                "تُصدَّر المرفقات التي يزيد حجمها على {size} كملفات منفصلة.",
                "عند الاستيراد من {app} تبقى المجلدات والوسوم وتواريخ الإنشاء كما هي.",
            ],
        ),
        "security": (
            ["المصادقة الثنائية", "كيف نحمي بياناتك"],
            [
                "ننصح بتفعيل المصادقة الثنائية لكل حساب.",
                "جميع الملاحظات مشفرة أثناء النقل وأثناء التخزين.",
                "بعد {n} محاولات فاشلة لتسجيل الدخول، يُقفل الحساب لمدة خمس عشرة دقيقة.",
            ],
        ),
        "sharing": (
            ["مشاركة دفتر ملاحظات", "ربط {app}"],
            [
                "لمشاركة دفتر، انقر على مشاركة وأدخل البريد الإلكتروني لزميلك.",
                "يمكن للضيوف العرض والتعليق، لكن لا يمكنهم التعديل دون إذنك.",
                "يرسل تكامل {app} رسالة كلما تغيّرت ملاحظة مشتركة.",
            ],
        ),
    },
    "hi": {
        "sync": (
            ["मेरे नोट्स सिंक क्यों नहीं हो रहे?", "डिवाइसों के बीच सिंक"],
            [
                "ऑनलाइन रहने पर Lumen हर कुछ सेकंड में आपके नोट्स सिंक करता है।",
                "अगर कोई डिवाइस {days} दिन से ज़्यादा ऑफ़लाइन रहा है, तो ऐप खोलें और पूरा सिंक शुरू करने के लिए नीचे खींचें।",
                "ऑफ़लाइन किए गए बदलाव डिवाइस पर सुरक्षित रहते हैं और कनेक्शन मिलते ही अपलोड हो जाते हैं।",
                "{plan} प्लान में आप एक साथ {n} डिवाइस तक सिंक कर सकते हैं।",
            ],
        ),
        "billing": (
            ["प्लान बदलना", "अपना बिल समझें"],
            [
                "आप कभी भी सेटिंग्स > बिलिंग से {plan} प्लान पर अपग्रेड कर सकते हैं।",
                "बिल हर बिलिंग अवधि के पहले दिन ईमेल से भेजे जाते हैं।",
                "नवीनीकरण के {days} दिनों के भीतर रद्द करने पर हम बचा हुआ हिस्सा लौटा देते हैं।",
            ],
        ),
        "export": (
            ["अपना डेटा एक्सपोर्ट करें", "दूसरे ऐप से नोट्स इम्पोर्ट करें"],
            [
                "आप अपने सभी नोट्स Markdown, HTML या PDF में एक्सपोर्ट कर सकते हैं।",
                "{size} से बड़े अटैचमेंट अलग फ़ाइलों के रूप में एक्सपोर्ट होते हैं।",
                "{app} से इम्पोर्ट करने पर आपके फ़ोल्डर, टैग और बनाने की तारीखें बनी रहती हैं।",
            ],
        ),
        "security": (
            ["टू-फ़ैक्टर ऑथेंटिकेशन", "हम आपका डेटा कैसे सुरक्षित रखते हैं"],
            [
                "हम हर खाते के लिए टू-फ़ैक्टर ऑथेंटिकेशन चालू करने की सलाह देते हैं।",
                "सभी नोट्स ट्रांसफ़र के दौरान और स्टोर होने पर एन्क्रिप्ट रहते हैं।",
                "{n} बार गलत लॉग-इन के बाद खाता पंद्रह मिनट के लिए लॉक हो जाता है।",
            ],
        ),
        "sharing": (
            ["नोटबुक शेयर करना", "{app} जोड़ना"],
            [
                "नोटबुक शेयर करने के लिए शेयर पर क्लिक करें और अपने सहकर्मी का ईमेल डालें।",
                "मेहमान देख और टिप्पणी कर सकते हैं, लेकिन आपकी अनुमति के बिना बदलाव नहीं कर सकते।",
                "{app} इंटीग्रेशन हर बार शेयर किया गया नोट बदलने पर एक संदेश भेजता है।",
            ],
        ),
    },
    "ru": {
        "sync": (
            ["Почему мои заметки не синхронизируются?", "Синхронизация между устройствами"],
            [
                "Lumen синхронизирует ваши заметки каждые несколько секунд, пока вы в сети.",
                "Если устройство было офлайн больше {days} дней, откройте приложение и потяните экран вниз, чтобы запустить полную синхронизацию.",
                "Изменения, сделанные без сети, сохраняются на устройстве и отправляются, как только появится соединение.",
                "На тарифе {plan} можно синхронизировать до {n} устройств одновременно.",
                "При конфликте правок ничего не теряется: Lumen сохраняет обе версии заметки.",
            ],
        ),
        "billing": (
            ["Смена тарифа", "Как читать счёт", "Возврат средств и отмена подписки"],
            [
                "Перейти на тариф {plan} можно в любой момент в разделе Настройки > Оплата.",
                "Счета приходят на почту в первый день каждого расчётного периода.",
                "Если вы отмените подписку в течение {days} дней после продления, мы вернём неиспользованную часть.",
                "Цены в приложении указаны с учётом НДС, если он применяется.",
            ],
        ),
        "export": (
            ["Экспорт данных", "Импорт заметок из других приложений"],
            [
                "Все заметки можно экспортировать в Markdown, HTML или PDF.",
                "Вложения больше {size} экспортируются отдельными файлами в ту же папку.",
                "При импорте из {app} сохраняются папки, теги и даты создания.",
                "На платных тарифах автоматическая резервная копия хранится {days} дней.",
            ],
        ),
        "security": (
            ["Двухфакторная аутентификация", "Как мы защищаем ваши данные"],
            [
                "Мы рекомендуем включить двухфакторную аутентификацию для каждой учётной записи.",
                "Все заметки шифруются при передаче и при хранении.",
                "После {n} неудачных попыток входа учётная запись блокируется на пятнадцать минут.",
                "В разделе Настройки > Безопасность видны все активные сеансы.",
            ],
        ),
        "sharing": (
            ["Общий доступ к блокноту", "Подключение {app}"],
            [
                "Чтобы поделиться блокнотом, нажмите «Поделиться» и введите адрес коллеги.",
                "Гости могут читать и комментировать, но не редактировать без вашего разрешения.",
                "Интеграция с {app} отправляет сообщение при каждом изменении общей заметки.",
            ],
        ),
    },
}

# How often each language appears among the short documents.
LANG_WEIGHTS = {"en": 30, "fr": 9, "de": 9, "es": 9, "pt": 7, "it": 6, "ja": 8, "zh": 7, "ar": 5, "hi": 5, "ru": 7}


def fill(template: str, rng: random.Random) -> str:
    """Replace every {slot} in ``template`` with a value drawn from SLOTS."""
    return template.format(**{name: rng.choice(values) for name, values in SLOTS.items()})


def joiner(lang: str) -> str:
    """Sentences are separated by a space, except in Chinese and Japanese."""
    return "" if lang in ("ja", "zh") else " "


def short_doc(lang: str, rng: random.Random) -> tuple[str, str]:
    """A title and 1-6 sentences on one topic (plus, rarely, one from another topic)."""
    topics = PHRASES[lang]
    topic = rng.choice(sorted(topics))
    titles, sentences = topics[topic]
    k = rng.randint(1, min(6, len(sentences)))
    chosen = rng.sample(sentences, k)
    if k < 6 and rng.random() < 0.2:
        other = rng.choice(sorted(t for t in topics if t != topic))
        chosen.append(rng.choice(topics[other][1]))
    return fill(rng.choice(titles), rng), joiner(lang).join(fill(s, rng) for s in chosen)


def long_doc(lang: str, rng: random.Random) -> tuple[str, str]:
    """A 3-6k character guide: one paragraph per topic, round after round."""
    target = rng.randint(3200, 5800)
    topics = PHRASES[lang]
    paragraphs: list[str] = []
    length = 0
    while length < target:
        for topic in sorted(topics):
            sentences = topics[topic][1]
            chosen = rng.sample(sentences, rng.randint(3, len(sentences)))
            para = joiner(lang).join(fill(s, rng) for s in chosen)
            if length + len(para) + 2 > 6000:
                break
            paragraphs.append(para)
            length += len(para) + 2
            if length >= target:
                break
        else:
            continue
        break
    title = " / ".join(fill(topics[t][0][0], rng) for t in sorted(topics)[:2])
    return title, "\n\n".join(paragraphs)


def build() -> list[str]:
    """The corpus, one JSON line per document."""
    rng = random.Random(SEED)
    langs = sorted(LANG_WEIGHTS)
    weights = [LANG_WEIGHTS[lang] for lang in langs]
    lines: list[str] = []
    for line_no in range(1, N_DOCS + 1):
        doc_id = f"doc-{line_no:04d}"
        if line_no == BROKEN_JSON_LINE:
            # Deliberately broken: cut off mid-string, so it is not JSON.
            lines.append(f'{{"id": "{doc_id}", "lang": "en", "title": "A line cut short", "text": "This line stops in the middle of a str')
            continue
        if line_no == EMPTY_TEXT_LINE:
            lines.append(json.dumps({"id": doc_id, "lang": "en", "title": "An empty document", "text": ""}, ensure_ascii=False))
            continue
        lang = LONG_DOCS.get(line_no) or rng.choices(langs, weights)[0]
        title, text = long_doc(lang, rng) if line_no in LONG_DOCS else short_doc(lang, rng)
        lines.append(json.dumps({"id": doc_id, "lang": lang, "title": title, "text": text}, ensure_ascii=False))
    return lines


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "configs" / "sample" / "docs.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = build()
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} lines to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
